package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// ceilingArg, as the first argument, re-executes this binary as the ceiling
// server. It is not one of the documented flags.
const ceilingArg = "-ceiling"

// The ceiling uses the daemon's server limits (SPEC §2.3) so that the two
// servers differ only in the work their handlers do.
const (
	readHeaderTimeout = 10 * time.Second
	readTimeout       = 30 * time.Second
	writeTimeout      = 60 * time.Second
	idleTimeout       = 120 * time.Second
	maxHeaderBytes    = 64 << 10
	maxBody           = 1 << 20
)

// runCeiling is the ceiling server: a bare net/http server answering the two
// agent routes with minimal work, a child process like the daemon so that
// both compete with the load generator for the CPUs in the same way. It
// serves until SIGTERM or SIGINT.
//
//   - POST /api/v1/machines/{id}/report reads and discards the body, then 200;
//   - GET /api/v1/machines/{id}/desired-generation answers the same bytes as
//     the daemon does for a machine pinned to benchStorePath.
func runCeiling(args []string) error {
	fs := flag.NewFlagSet("loadbench -ceiling", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
	certFile := fs.String("tls-cert", "", "PEM server certificate (enables TLS)")
	keyFile := fs.String("tls-key", "", "PEM server key")
	caFile := fs.String("client-ca", "", "PEM client CA (enables mTLS)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	pollBody := desiredBody(benchStorePath)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v1/machines/{id}/report", func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			w.WriteHeader(http.StatusRequestEntityTooLarge)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	mux.HandleFunc("GET /api/v1/machines/{id}/desired-generation", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(pollBody)
	})
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok")
	})

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", *listen, err)
	}
	mode := "plain"
	if *certFile != "" {
		cfg, err := serverTLS(*certFile, *keyFile, *caFile)
		if err != nil {
			return err
		}
		ln = tls.NewListener(ln, cfg)
		mode = "tls"
		if *caFile != "" {
			mode = "mtls"
		}
	}
	srv := &http.Server{
		Handler:           http.MaxBytesHandler(mux, maxBody),
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		// A non-nil empty map disables HTTP/2, as in the daemon.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	log.Info("ceiling listening", "addr", ln.Addr().String(), "mode", mode)

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// serverTLS is the daemon's TLS configuration (SPEC §2.2): TLS 1.2 or later,
// http/1.1 only, and RequireAndVerifyClientCert when a client CA is given.
func serverTLS(certFile, keyFile, caFile string) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load server certificate: %w", err)
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{pair},
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"http/1.1"},
		ClientAuth:   tls.NoClientCert,
	}
	if caFile != "" {
		b, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("read client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("client CA %s: no certificate", caFile)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}
