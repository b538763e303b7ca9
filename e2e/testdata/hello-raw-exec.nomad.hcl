# A batch job on every node's raw_exec driver: prints who and where it
# runs (uid, network namespace).
job "hello-raw-exec" {
  type = "sysbatch"

  group "hello" {
    task "hello" {
      driver = "raw_exec"

      config {
        command = "/bin/sh"
        args    = ["-c", "echo node=${node.unique.name} uid=$(id -u) netns=$(readlink /proc/self/ns/net)"]
      }

      resources {
        cpu    = 50
        memory = 32
      }
    }
  }
}
