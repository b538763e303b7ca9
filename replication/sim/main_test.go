package sim

import (
	"os"
	"testing"
)

// TestMain lets this test binary double as a replica process
// (Config.Processes).
func TestMain(m *testing.M) {
	if dir := os.Getenv(replicaEnv); dir != "" {
		os.Exit(replicaMain(dir))
	}
	os.Exit(m.Run())
}
