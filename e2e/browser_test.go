package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/shoenig/test/must"
)

// browser is a headless Chromium (Debian's chromium package, installed by
// scripts/install-deps.sh) driven over the DevTools protocol by chromedp.
// It runs with a fresh profile and everything that would reach outside
// the machine turned off; the test's cleanup ends it (and the profile
// directory goes with t.TempDir).
type browser struct {
	ctx       context.Context
	artifacts string // where screenshots go
	shots     int
}

// chromiumFlags are the switches Chromium runs with: headless, no sandbox
// (the tests run as root), and no background traffic of its own (this
// machine's network is closed and must not be contacted).
var chromiumFlags = []string{
	"headless", "no-sandbox", "disable-gpu", "disable-quic", "no-first-run",
	"disable-background-networking", "disable-component-update", "disable-sync",
	"disable-default-apps", "disable-extensions", "disable-domain-reliability",
	"disable-client-side-phishing-detection", "no-default-browser-check", "no-pings",
	"metrics-recording-only", "disable-breakpad", "mute-audio", "hide-scrollbars", "no-proxy-server",
}

// newBrowser starts Chromium for t; screenshots go to artifacts.
func newBrowser(t *testing.T, artifacts string) *browser {
	t.Helper()
	path, err := exec.LookPath("chromium")
	must.NoError(t, err, must.Sprint("Debian's chromium package is missing: make deps (scripts/install-deps.sh) installs it"))
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1440, 1000),
		chromedp.Flag("disable-features", "Translate,OptimizationHints,MediaRouter,AutofillServerCommunication,CertificateTransparencyComponentUpdater"),
	}
	for _, f := range chromiumFlags {
		opts = append(opts, chromedp.Flag(f, true))
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	// Cancelling the allocator ends Chromium and waits for it.
	t.Cleanup(func() { cancelCtx(); cancelAlloc() })
	must.NoError(t, chromedp.Do(ctx), must.Sprint("start chromium"))
	return &browser{ctx: ctx, artifacts: artifacts}
}

// do runs chromedp actions with a deadline.
func (b *browser) do(d time.Duration, steps ...chromedp.Action[chromedp.Void]) error {
	ctx, cancel := context.WithTimeout(b.ctx, d)
	defer cancel()
	return chromedp.Do(ctx, steps...)
}

// eval evaluates a JavaScript expression in the page.
func eval[T any](b *browser, expr string) (T, error) {
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Evaluate[T](expr))
}

// text is the page's visible text.
func (b *browser) text() (string, error) {
	return eval[string](b, `document.body ? document.body.innerText : ""`)
}

// waitText waits until the page's visible text holds every one of want
// (and ok, when given, accepts it), returning the text last seen.
func (b *browser) waitText(d time.Duration, ok func(string) bool, want ...string) (string, error) {
	deadline := time.Now().Add(d)
	loaded := time.Now()
	var last string
	for {
		s, err := b.text()
		if err == nil {
			last = s
			missing := ""
			for _, w := range want {
				if !strings.Contains(s, w) {
					missing = w
					break
				}
			}
			if missing == "" && (ok == nil || ok(s)) {
				return s, nil
			}
		}
		if time.Now().After(deadline) {
			return last, fmt.Errorf("the page never showed %q as expected (last error %v)", want, err)
		}
		time.Sleep(500 * time.Millisecond)
		// The UI follows Consul with blocking queries; still, reload a
		// page that has shown the same for a while.
		if time.Since(loaded) > 20*time.Second {
			_ = b.do(30*time.Second, chromedp.Reload())
			loaded = time.Now()
		}
	}
}

// screenshot saves the whole page as NN-name.png in the artifacts
// directory and returns its path.
func (b *browser) screenshot(name string) (string, error) {
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		return "", err
	}
	b.shots++
	p := filepath.Join(b.artifacts, fmt.Sprintf("%02d-%s.png", b.shots, name))
	return p, os.WriteFile(p, png, 0o644)
}
