package main

import (
	"fmt"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// transportWarnings says where the sidecar's traffic may cross a network
// in plaintext: clients on a listener that is not loopback without
// --tls-cert, and each of its own connections (upstream, catalog, log)
// to a server that is not local whose sslmode lets it fall back to
// plaintext (disable, allow, prefer — prefer is libpq's default) or does
// not verify the server (require). Each warning says what to do.
func transportWarnings(listen string, clientTLS bool, urls map[string]string) []string {
	var out []string
	if !clientTLS && !loopbackListen(listen) {
		out = append(out, fmt.Sprintf("clients can connect to %s without TLS, and their passwords and data cross the network in plaintext: "+
			"give --tls-cert and --tls-key, or listen on a loopback address", listen))
	}
	for _, flag := range []string{"upstream", "catalog", "log"} {
		if w := connWarning(flag, urls[flag]); w != "" {
			out = append(out, w)
		}
	}
	return out
}

// connWarning is transportWarnings for one connection URL ("" when it is
// safe, local, or not given).
func connWarning(flag, url string) string {
	if url == "" {
		return ""
	}
	if strings.HasPrefix(url, "nats://") {
		return natsWarning(flag, url)
	}
	cfg, err := pgconn.ParseConfig(url)
	if err != nil || localHost(cfg.Host) {
		return ""
	}
	plaintext := cfg.TLSConfig == nil
	for _, fb := range cfg.Fallbacks {
		plaintext = plaintext || fb.TLSConfig == nil
	}
	switch {
	case plaintext:
		return fmt.Sprintf("--%s may connect to %s in plaintext (its sslmode is disable, allow or prefer, the default): "+
			"use sslmode=verify-full with the server's CA (sslrootcert)", flag, cfg.Host)
	case cfg.TLSConfig.InsecureSkipVerify && cfg.TLSConfig.VerifyPeerCertificate == nil:
		return fmt.Sprintf("--%s connects to %s with TLS but does not check who answers (sslmode=require): "+
			"use sslmode=verify-full with the server's CA (sslrootcert)", flag, cfg.Host)
	}
	return ""
}

// loopbackListen says whether a listen address takes connections from
// this host only.
func loopbackListen(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	return localHost(host)
}

// localHost says whether host is this machine: a loopback name or
// address, or a Unix socket directory.
func localHost(host string) bool {
	if strings.HasPrefix(host, "/") || host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// natsWarning is connWarning for a NATS log URL: nats:// to a server that
// is not local may be plaintext (the server decides); tls:// is not.
func natsWarning(flag, url string) string {
	servers, _, _ := strings.Cut(strings.TrimPrefix(url, "nats://"), "?")
	for _, s := range strings.Split(servers, ",") {
		if at := strings.LastIndexByte(s, '@'); at >= 0 {
			s = s[at+1:]
		}
		s = strings.TrimPrefix(s, "nats://")
		host, _, err := net.SplitHostPort(s)
		if err != nil {
			host = s
		}
		if !localHost(host) {
			return fmt.Sprintf("--%s may connect to %s in plaintext (nats://): use tls:// with the servers' CA (tls_ca)", flag, host)
		}
	}
	return ""
}
