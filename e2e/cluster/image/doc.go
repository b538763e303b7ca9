// Package image makes the docker form's images (issue 15) from this
// host's own files, for `docker import`: no registry is reachable from
// the test cluster, so an Image is a root file system of host files
// (each executable with the shared libraries ldd names for it, links
// kept as links) and files given by content, written as a tar stream
// (WriteTar). Saddlebag is the saddlebag image (a static build and the
// file-system tools it runs), Postgres the workload's; e2e/cluster's
// ImportImage loads one into every node's dockerd.
//
// It imports none of Saddlebag's packages (internal/layering enforces
// it).
package image
