// Package connecttls gives every Saddlebag connection mutual TLS with
// certificates from Consul's Connect CA, and authorizes peers through
// Consul intentions. There is no PKI of Saddlebag's own.
//
//   - Source fetches this process's leaf certificate for its service
//     (saddlebag-node or saddlebag-controller) and the CA roots from the
//     local Consul agent (Agent().ConnectCALeaf, Agent().ConnectCARoots),
//     and keeps both current with blocking queries: the agent renews the
//     leaf before it expires and re-signs it when the roots rotate, and the
//     blocking query returns the new one. TLS configs read the current
//     certificate and roots at each handshake (GetCertificate,
//     GetClientCertificate, VerifyConnection), so a rotation applies to new
//     handshakes and established connections are left alone.
//   - A peer is trusted only if its chain verifies against the roots
//     Consul publishes now (old and new during a root rotation) and its
//     certificate carries a SPIFFE service identity of this cluster's trust
//     domain. A client also checks the server is the service it meant.
//   - Authorizer asks the local agent (Agent().ConnectAuthorize) whether
//     the client's identity may reach a target service under the current
//     intentions; decisions are cached for at most AuthorizeCacheTTL, so a
//     changed intention applies to new connections within that time.
//   - DefaultIntentions and InstallIntentions are the intentions
//     Saddlebag needs (`saddlebag setup-intentions`): saddlebag-node
//     accepts saddlebag-node (primaries, resync) and saddlebag-controller
//     (create, delete); saddlebag-controller accepts saddlebag-controller
//     (forwarded calls); anything else is denied, whatever Consul's default.
//
// It knows nothing of the replica protocol or CSI: replication's server
// takes a Guard and its engine a Dialer, plugin's forwarding channel gRPC
// credentials; cmd/saddlebag wires them to this package.
package connecttls
