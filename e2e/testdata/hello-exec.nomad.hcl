# A batch job on the exec driver (isolated: chroot, its own PID namespace,
# cgroups, runs as nobody): prints who and where it runs.
job "hello-exec" {
  type = "batch"

  group "hello" {
    task "hello" {
      driver = "exec"

      config {
        command = "/bin/sh"
        args    = ["-c", "echo node=${node.unique.name} uid=$(id -u) pid=$$ root=$(ls / | tr '\\n' ,)"]
      }

      resources {
        cpu    = 50
        memory = 32
      }
    }
  }
}
