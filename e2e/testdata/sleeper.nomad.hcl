# A long-running task on every node (raw_exec): killing a node must kill
# it too, and Nomad must mark it lost.
job "sleeper" {
  type = "system"

  group "sleep" {
    task "sleep" {
      driver = "raw_exec"

      config {
        command = "/bin/sleep"
        args    = ["3600"]
      }

      resources {
        cpu    = 20
        memory = 16
      }
    }
  }
}
