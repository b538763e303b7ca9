module github.com/saddlebag/saddlebag

go 1.26.0

require (
	github.com/fatih/color v1.13.0 // indirect
	github.com/google/go-cmp v0.7.0 // indirect
	github.com/hashicorp/go-hclog v1.6.3 // indirect
	github.com/mattn/go-colorable v0.1.12 // indirect
	github.com/mattn/go-isatty v0.0.14 // indirect
	github.com/shoenig/test v1.13.2 // indirect
	golang.org/x/sys v0.49.0 // indirect
)
