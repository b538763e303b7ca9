package leader

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
)

// ConsulConfig says how to reach Consul. Empty fields fall back to Consul's
// usual environment variables (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN,
// CONSUL_CACERT, CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY, ...), then to the
// local agent at 127.0.0.1:8500.
type ConsulConfig struct {
	// Address is host:port, or a URL with an http/https scheme.
	Address string
	// Token is the ACL token sent with every request.
	Token string
	// CAFile verifies the server certificate (https). CertFile and KeyFile
	// are the client certificate for servers that verify clients.
	CAFile, CertFile, KeyFile string
	// TLSServerName overrides the name the server certificate is checked
	// against (e.g. "localhost" or "server.dc1.consul").
	TLSServerName string
	// Prefix is the KV prefix (default DefaultPrefix).
	Prefix string
}

// Client is a Consul API client bound to a KV layout. It is safe for
// concurrent use.
type Client struct {
	api  *api.Client
	keys Keys
	log  hclog.Logger
}

// NewClient builds a client; it does not contact Consul.
func NewClient(cfg ConsulConfig, log hclog.Logger) (*Client, error) {
	keys, err := NewKeys(cfg.Prefix)
	if err != nil {
		return nil, err
	}
	ac := api.DefaultConfig()
	if cfg.Address != "" {
		ac.Address = cfg.Address
	}
	if cfg.Token != "" {
		ac.Token = cfg.Token
	}
	if cfg.CAFile != "" {
		ac.TLSConfig.CAFile = cfg.CAFile
	}
	if cfg.CertFile != "" {
		ac.TLSConfig.CertFile = cfg.CertFile
	}
	if cfg.KeyFile != "" {
		ac.TLSConfig.KeyFile = cfg.KeyFile
	}
	if cfg.TLSServerName != "" {
		ac.TLSConfig.Address = cfg.TLSServerName
	}
	if (ac.TLSConfig.CAFile != "" || ac.TLSConfig.CertFile != "") && ac.Scheme == "http" && !hasScheme(ac.Address) {
		ac.Scheme = "https"
	}
	c, err := api.NewClient(ac)
	if err != nil {
		return nil, fmt.Errorf("%w: consul client: %w", ErrInvalid, err)
	}
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Client{api: c, keys: keys, log: log.Named("consul")}, nil
}

func hasScheme(addr string) bool {
	for _, s := range []string{"http://", "https://", "unix://"} {
		if len(addr) >= len(s) && addr[:len(s)] == s {
			return true
		}
	}
	return false
}

// API returns the underlying Consul client.
func (c *Client) API() *api.Client { return c.api }

// Keys returns the KV layout.
func (c *Client) Keys() Keys { return c.keys }

// requestTimeout bounds every non-blocking Consul request.
const requestTimeout = 10 * time.Second

// qopts returns consistent-read query options bound to ctx.
func qopts(ctx context.Context) *api.QueryOptions {
	return (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx)
}

// aopts returns query options for the local agent's endpoints.
func aopts(ctx context.Context) *api.QueryOptions {
	return (&api.QueryOptions{}).WithContext(ctx)
}

func wopts(ctx context.Context) *api.WriteOptions {
	return (&api.WriteOptions{}).WithContext(ctx)
}

// isNotFound reports whether err is Consul answering 404.
func isNotFound(err error) bool {
	var se api.StatusError
	return errors.As(err, &se) && se.Code == http.StatusNotFound
}

// bounded returns ctx limited to requestTimeout.
func bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, requestTimeout)
}
