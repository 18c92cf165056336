// grpcprobe is the e2e suite's independent client for capow's externalgrpc server. It dials
// the way cluster-autoscaler's externalgrpc client does (grpc-go with TLS built from the
// --cloud-config file: client certificate, RootCAs = cacert, ServerName = host of address),
// calls one RPC with raw protobuf bytes, and decodes v1.Node bytes with Kubernetes' own
// generated code (k8s.io/api). It exists because the cluster-autoscaler module is not served
// by the Go module proxy here; grpc-go and k8s.io/api are the pieces of CA that matter for
// wire and TLS compatibility.
//
// Usage:
//
//	grpcprobe call --cloud-config FILE --method NodeGroups [--request-b64 B64]   prints the reply, base64
//	grpcprobe decode-node                                                         reads base64 v1.Node on stdin, prints JSON
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	v1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

type cloudConfig struct {
	Address     string `json:"address"`
	Key         string `json:"key"`
	Cert        string `json:"cert"`
	Cacert      string `json:"cacert"`
	GrpcTimeout string `json:"grpc_timeout"`
}

// rawCodec passes protobuf bytes through unchanged.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "grpcprobe: "+format+"\n", args...)
	os.Exit(1)
}

func call(args []string) {
	fs := flag.NewFlagSet("call", flag.ExitOnError)
	path := fs.String("cloud-config", "", "cluster-autoscaler --cloud-config file")
	method := fs.String("method", "NodeGroups", "RPC name")
	request := fs.String("request-b64", "", "request message, base64 protobuf")
	_ = fs.Parse(args)

	raw, err := os.ReadFile(*path)
	if err != nil {
		fail("read cloud-config: %v", err)
	}
	var cfg cloudConfig
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		fail("parse cloud-config: %v", err)
	}
	timeout := 5 * time.Second
	if cfg.GrpcTimeout != "" {
		if timeout, err = time.ParseDuration(cfg.GrpcTimeout); err != nil {
			fail("grpc_timeout: %v", err)
		}
	}
	// As cluster-autoscaler's externalgrpc client builds its transport credentials.
	host, _, err := net.SplitHostPort(cfg.Address)
	if err != nil {
		fail("address: %v", err)
	}
	pair, err := tls.LoadX509KeyPair(cfg.Cert, cfg.Key)
	if err != nil {
		fail("client certificate: %v", err)
	}
	caPEM, err := os.ReadFile(cfg.Cacert)
	if err != nil {
		fail("cacert: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		fail("cacert holds no certificate")
	}
	creds := credentials.NewTLS(&tls.Config{ServerName: host, Certificates: []tls.Certificate{pair}, RootCAs: pool})
	conn, err := grpc.NewClient(cfg.Address, grpc.WithTransportCredentials(creds))
	if err != nil {
		fail("dial: %v", err)
	}
	defer conn.Close()
	in, err := base64.StdEncoding.DecodeString(*request)
	if err != nil {
		fail("request: %v", err)
	}
	var out []byte
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	full := "/clusterautoscaler.cloudprovider.v1.externalgrpc.CloudProvider/" + *method
	if err := conn.Invoke(ctx, full, &in, &out, grpc.ForceCodec(rawCodec{})); err != nil {
		fail("%s: %v", *method, err)
	}
	fmt.Println(base64.StdEncoding.EncodeToString(out))
}

func decodeNode() {
	in, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("read stdin: %v", err)
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(in)))
	if err != nil {
		fail("base64: %v", err)
	}
	var node v1.Node
	if err := node.Unmarshal(raw); err != nil {
		fail("v1.Node: %v", err)
	}
	out, err := json.Marshal(&node)
	if err != nil {
		fail("json: %v", err)
	}
	fmt.Println(string(out))
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: grpcprobe call|decode-node ...")
	}
	switch os.Args[1] {
	case "call":
		call(os.Args[2:])
	case "decode-node":
		decodeNode()
	default:
		fail("unknown command %q", os.Args[1])
	}
}
