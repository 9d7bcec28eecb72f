package main

import (
	"strings"
	"testing"
)

func TestTransportWarnings(t *testing.T) {
	cases := []struct {
		name      string
		listen    string
		clientTLS bool
		urls      map[string]string
		want      []string // a word of each warning, in order
	}{
		{"loopback, local servers", "127.0.0.1:6432", false,
			map[string]string{"upstream": "postgres://u@localhost/shop", "catalog": "postgres://u@127.0.0.1/rejot"}, nil},
		{"every interface without TLS", ":6432", false, nil, []string{"clients can connect to :6432 without TLS"}},
		{"a public address without TLS", "10.1.2.3:6432", false, nil, []string{"without TLS"}},
		{"every interface with TLS", ":6432", true, nil, nil},
		{"ipv6 loopback", "[::1]:6432", false, nil, nil},
		{"remote upstream, default sslmode (prefer)", "127.0.0.1:6432", false,
			map[string]string{"upstream": "postgres://u@db.internal/shop"}, []string{"--upstream may connect to db.internal in plaintext"}},
		{"remote catalog, sslmode=disable", "127.0.0.1:6432", false,
			map[string]string{"catalog": "postgres://u@db.internal/rejot?sslmode=disable"}, []string{"--catalog may connect"}},
		{"remote log, sslmode=allow", "127.0.0.1:6432", false,
			map[string]string{"log": "postgres://u@db.internal/rejot?sslmode=allow"}, []string{"--log may connect"}},
		{"remote upstream, sslmode=require", "127.0.0.1:6432", false,
			map[string]string{"upstream": "postgres://u@db.internal/shop?sslmode=require"}, []string{"does not check who answers"}},
		{"remote upstream, sslmode=verify-full", "127.0.0.1:6432", false,
			map[string]string{"upstream": "postgres://u@db.internal/shop?sslmode=verify-full"}, nil},
		{"a Unix socket", "127.0.0.1:6432", false,
			map[string]string{"upstream": "postgres:///shop?host=/var/run/postgresql"}, nil},
		{"remote NATS log, nats://", "127.0.0.1:6432", false,
			map[string]string{"log": "nats://u:p@nats-1.internal:4222,nats-2.internal:4222?replicas=3"}, []string{"--log may connect to nats-1.internal in plaintext"}},
		{"local NATS log", "127.0.0.1:6432", false, map[string]string{"log": "nats://127.0.0.1:4222"}, nil},
		{"remote NATS log, tls://", "127.0.0.1:6432", false, map[string]string{"log": "tls://nats-1.internal:4222"}, nil},
		{"both kinds", ":6432", false,
			map[string]string{"upstream": "postgres://u@db.internal/shop?sslmode=disable"}, []string{"without TLS", "--upstream"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := transportWarnings(c.listen, c.clientTLS, c.urls)
			if len(got) != len(c.want) {
				t.Fatalf("got %d warnings, want %d: %q", len(got), len(c.want), got)
			}
			for i, w := range c.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("warning %d is %q, want it to say %q", i, got[i], w)
				}
			}
		})
	}
}
