// Package kubetest starts a real kube-apiserver and etcd on loopback for tests: the one helper every
// test that needs Kubernetes uses. No kubelet runs, so pods never start: tests play the kubelet by
// creating Pods, setting their status and creating EndpointSlices themselves.
//
// The binaries are built from Go modules once by build.sh and cached outside the repository. One
// server is shared by all tests of a package: call Start from any test, and wrap the package's tests
// with Run in TestMain so the server stops when they end.
package kubetest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Server is a running kube-apiserver with its etcd.
type Server struct {
	// URL is the API server's https address on loopback.
	URL string
	// Config authenticates as a cluster administrator (group system:masters), who may also impersonate
	// any user or ServiceAccount (rest.Config.Impersonate) to test what RBAC grants them.
	Config *rest.Config
	// Kubeconfig is the path of a kubeconfig file with the same credentials, for --kubeconfig flags,
	// kubectl and Prometheus' kubernetes_sd_configs.
	Kubeconfig string
	// Client is a clientset over Config.
	Client kubernetes.Interface
	// Dir holds the server's data, certificates and logs (apiserver.log, etcd.log).
	Dir string

	procs []proc
}

// proc is a child process, how it was started, and the channel closed when it has exited.
type proc struct {
	name, path, logName string
	args                []string
	cmd                 *exec.Cmd
	done                chan struct{}
}

var shared struct {
	sync.Mutex
	srv *Server
	err error
}

// Start returns the package's shared API server, starting it on first use. It fails the test (never
// skips it) when the server cannot be built or started: a test that needs Kubernetes must not pass
// without it.
func Start(t testing.TB) *Server {
	t.Helper()
	shared.Lock()
	defer shared.Unlock()
	if shared.srv == nil && shared.err == nil {
		shared.srv, shared.err = start()
	}
	if shared.err != nil {
		t.Fatalf("kubetest: %v", shared.err)
	}
	return shared.srv
}

// Run runs a package's tests and then stops the shared server if one was started; use it as
// os.Exit(kubetest.Run(m)) in TestMain.
func Run(m *testing.M) int {
	code := m.Run()
	shared.Lock()
	defer shared.Unlock()
	if shared.srv != nil {
		shared.srv.stop()
		shared.srv = nil
	}
	return code
}

// Binaries builds (or finds in the cache) kube-apiserver and etcd and returns their directory.
func Binaries() (string, error) {
	_, file, _, _ := runtime.Caller(0)
	cmd := exec.Command("bash", filepath.Join(filepath.Dir(file), "build.sh"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("build.sh: %w: %s", err, lastLines(stderr.String(), 20))
	}
	return strings.TrimSpace(string(out)), nil
}

func start() (*Server, error) {
	bin, err := Binaries()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "kubetest-")
	if err != nil {
		return nil, err
	}
	s := &Server{Dir: dir}
	if err := s.startAll(bin); err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
}

func (s *Server) startAll(bin string) error {
	etcdURL, err := s.startEtcd(bin)
	if err != nil {
		return err
	}
	certs, err := writeCerts(s.Dir)
	if err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	s.URL = "https://127.0.0.1:" + strconv.Itoa(port)
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--secure-port=" + strconv.Itoa(port),
		"--tls-cert-file=" + certs.serving, "--tls-private-key-file=" + certs.servingKey,
		"--client-ca-file=" + certs.ca,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + certs.saPub, "--service-account-signing-key-file=" + certs.saKey,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--authorization-mode=Node,RBAC",
		// No controller-manager creates each namespace's "default" ServiceAccount, so the admission
		// plugin that requires it would refuse every Pod that names none.
		"--disable-admission-plugins=ServiceAccount",
		// Nothing listens on the advertised address's kubernetes Service endpoints here.
		"--endpoint-reconciler-type=none",
		"--allow-privileged=true", "--profiling=false",
		"--cert-dir=" + filepath.Join(s.Dir, "serving"),
	}
	if err := s.spawn(filepath.Join(bin, "kube-apiserver"), "apiserver.log", args...); err != nil {
		return err
	}
	s.Config = &rest.Config{
		Host:            s.URL,
		TLSClientConfig: rest.TLSClientConfig{CAFile: certs.ca, CertFile: certs.admin, KeyFile: certs.adminKey},
		QPS:             500, Burst: 1000,
	}
	if s.Client, err = kubernetes.NewForConfig(s.Config); err != nil {
		return err
	}
	if err := s.writeKubeconfig(certs); err != nil {
		return err
	}
	return s.waitReady(3 * time.Minute)
}

func (s *Server) startEtcd(bin string) (string, error) {
	client, err := freePort()
	if err != nil {
		return "", err
	}
	peer, err := freePort()
	if err != nil {
		return "", err
	}
	clientURL := "http://127.0.0.1:" + strconv.Itoa(client)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peer)
	err = s.spawn(filepath.Join(bin, "etcd"), "etcd.log",
		"--name=kubetest", "--data-dir="+filepath.Join(s.Dir, "etcd"),
		"--listen-client-urls="+clientURL, "--advertise-client-urls="+clientURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=kubetest="+peerURL,
		"--unsafe-no-fsync", "--log-level=error")
	return clientURL, err
}

// spawn starts a child that dies with the test process even if Run never stops it.
func (s *Server) spawn(path, logName string, args ...string) error {
	p, err := s.startProc(path, logName, args)
	if err != nil {
		return err
	}
	s.procs = append(s.procs, p)
	return nil
}

func (s *Server) startProc(path, logName string, args []string) (proc, error) {
	logFile, err := os.OpenFile(filepath.Join(s.Dir, logName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return proc{}, err
	}
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := startOnLastingThread(cmd); err != nil {
		logFile.Close()
		return proc{}, fmt.Errorf("start %s: %w", filepath.Base(path), err)
	}
	p := proc{name: filepath.Base(path), path: path, logName: logName, args: args, cmd: cmd, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	return p, nil
}

// RestartAPIServer stops the API server (etcd keeps the data) and starts it again on the same address,
// returning once it is ready: every client's watches are cut and must resume. Tests that use it must
// not run in parallel with other tests of their package, which share the server.
func (s *Server) RestartAPIServer(t testing.TB) {
	t.Helper()
	shared.Lock()
	defer shared.Unlock()
	for i, p := range s.procs {
		if p.name != "kube-apiserver" {
			continue
		}
		stopProc(p)
		np, err := s.startProc(p.path, p.logName, p.args)
		if err != nil {
			t.Fatalf("kubetest: restart: %v", err)
		}
		s.procs[i] = np
		if err := s.waitReady(3 * time.Minute); err != nil {
			t.Fatalf("kubetest: restart: %v", err)
		}
		return
	}
	t.Fatal("kubetest: no kube-apiserver to restart")
}

// stopProc ends p: SIGTERM, then SIGKILL after 10 seconds.
func stopProc(p proc) {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// spawner runs functions on one OS thread that lives as long as the process.
var spawner = sync.OnceValue(func() chan func() {
	ch := make(chan func())
	go func() {
		runtime.LockOSThread() // never unlocked: the thread stays this goroutine's, and alive
		for f := range ch {
			f()
		}
	}()
	return ch
})

// startOnLastingThread starts cmd from a thread that never ends. Pdeathsig fires when the thread that
// forked the child ends, not the process: a child started from an ordinary goroutine dies as soon as the
// runtime retires that thread, which it does whenever a goroutine exits locked to it (a test that enters
// a network namespace does exactly that), killing the API server mid-test.
func startOnLastingThread(cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	spawner() <- func() { errc <- cmd.Start() }
	return <-errc
}

func (s *Server) waitReady(limit time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	var last error
	for {
		body, err := s.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err == nil && string(body) == "ok" {
			return nil
		}
		last = err
		for _, p := range s.procs {
			select {
			case <-p.done:
				return fmt.Errorf("%s exited: %s", p.name, lastLines(s.readLog(p.name), 20))
			default:
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("api server not ready after %v: %v: %s", limit, last, lastLines(s.readLog("kube-apiserver"), 20))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (s *Server) readLog(binary string) string {
	name := "etcd.log"
	if binary == "kube-apiserver" {
		name = "apiserver.log"
	}
	b, _ := os.ReadFile(filepath.Join(s.Dir, name))
	return string(b)
}

func (s *Server) stop() {
	for i := len(s.procs) - 1; i >= 0; i-- {
		stopProc(s.procs[i])
	}
	if os.Getenv("KUBETEST_KEEP") != "" {
		fmt.Fprintf(os.Stderr, "kubetest: KUBETEST_KEEP is set: logs and data kept in %s\n", s.Dir)
		return
	}
	os.RemoveAll(s.Dir)
}

func (s *Server) writeKubeconfig(c certFiles) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubetest"] = &clientcmdapi.Cluster{Server: s.URL, CertificateAuthority: c.ca}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificate: c.admin, ClientKey: c.adminKey}
	cfg.Contexts["kubetest"] = &clientcmdapi.Context{Cluster: "kubetest", AuthInfo: "admin", Namespace: "default"}
	cfg.CurrentContext = "kubetest"
	s.Kubeconfig = filepath.Join(s.Dir, "kubeconfig")
	return clientcmd.WriteToFile(*cfg, s.Kubeconfig)
}

type certFiles struct{ ca, serving, servingKey, admin, adminKey, saPub, saKey string }

// writeCerts makes a CA, the server's certificate for 127.0.0.1 and localhost, an administrator's
// client certificate and the ServiceAccount token signing key.
func writeCerts(dir string) (certFiles, error) {
	f := certFiles{}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return f, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubetest-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(7 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return f, err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	if f.ca, err = writePEM(dir, "ca.crt", "CERTIFICATE", caDER); err != nil {
		return f, err
	}
	leaf := func(name string, serial int64, tmpl *x509.Certificate) (string, string, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return "", "", err
		}
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Hour), now.Add(7*24*time.Hour)
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			return "", "", err
		}
		keyDER, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return "", "", err
		}
		crt, err := writePEM(dir, name+".crt", "CERTIFICATE", der)
		if err != nil {
			return "", "", err
		}
		k, err := writePEM(dir, name+".key", "EC PRIVATE KEY", keyDER)
		return crt, k, err
	}
	if f.serving, f.servingKey, err = leaf("serving", 2, &x509.Certificate{
		Subject: pkix.Name{CommonName: "kube-apiserver"}, DNSNames: []string{"localhost", "kubernetes", "kubernetes.default"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return f, err
	}
	if f.admin, f.adminKey, err = leaf("admin", 3, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kubetest-admin", Organization: []string{"system:masters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return f, err
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return f, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return f, err
	}
	if f.saPub, err = writePEM(dir, "sa.pub", "PUBLIC KEY", pub); err != nil {
		return f, err
	}
	f.saKey, err = writePEM(dir, "sa.key", "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(saKey))
	return f, err
}

func writePEM(dir, name, typ string, der []byte) (string, error) {
	path := filepath.Join(dir, name)
	return path, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}

// freePort asks the kernel for a free loopback port. Another process may take it before the server
// binds it; start then fails with the server's own message rather than a wrong result.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
