package main

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"strconv"
	"time"
)

// Mesh is a synthetic mesh shaped like a large cluster: namespaces of
// deployments of pods, every pod behind a proxy whose series are those of
// the real proxy (names, labels, buckets), with the target labels Prometheus
// would add. Every series grows at a constant rate, so each rate over any
// window has one exact answer.
type Mesh struct {
	Namespaces              int
	DeploymentsPerNamespace int
	PodsPerDeployment       int
	// Calls is how many other deployments each deployment calls.
	Calls int
}

// meshFor spreads pods over deployments of 5 pods in namespaces of 20
// deployments (fewer when pods is small), each deployment calling 2 others.
func meshFor(pods int) (Mesh, error) {
	if pods < 10 {
		return Mesh{}, fmt.Errorf("--pods %d: want at least 10", pods)
	}
	m := Mesh{PodsPerDeployment: 5, DeploymentsPerNamespace: 20, Calls: 2}
	deployments := (pods + m.PodsPerDeployment - 1) / m.PodsPerDeployment
	m.DeploymentsPerNamespace = min(m.DeploymentsPerNamespace, deployments)
	m.Namespaces = (deployments + m.DeploymentsPerNamespace - 1) / m.DeploymentsPerNamespace
	return m, nil
}

// Pods is the number of pods of m.
func (m Mesh) Pods() int { return m.Namespaces * m.DeploymentsPerNamespace * m.PodsPerDeployment }

func (m Mesh) deployments() int { return m.Namespaces * m.DeploymentsPerNamespace }

// Deployment d (0-based, namespace-major) and its traffic.
type Deployment struct {
	Namespace, Name string
	// RPS is each pod's inbound request rate.
	RPS float64
	// Failure is the share of its responses that fail.
	Failure float64
	// MeanMs is the mean of its (exponential) latency distribution.
	MeanMs float64
	// Calls are the deployments it calls.
	Calls []int
}

// Deployment describes deployment d. One deployment in 97 fails a quarter
// of its requests and is slow; the others fail 0.5%.
func (m Mesh) Deployment(d int) Deployment {
	dep := Deployment{
		Namespace: fmt.Sprintf("ns-%03d", d/m.DeploymentsPerNamespace),
		Name:      fmt.Sprintf("dep-%03d", d%m.DeploymentsPerNamespace),
		RPS:       1 + float64(d%7)/4,
		Failure:   0.005,
		MeanMs:    5 + float64(d%11)*3,
	}
	if d%97 == 3 {
		dep.Failure, dep.MeanMs = 0.25, 400
	}
	for i := 1; i <= m.Calls; i++ {
		dep.Calls = append(dep.Calls, (d+i*7)%m.deployments())
	}
	return dep
}

// Buckets are the proxy's latency histogram bounds (ms), as it exports them.
var Buckets = []float64{1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500, 1000, 2000, 3000, 4000, 5000, 10000, 20000, 30000, 40000, 50000}

// series is one time series: its name and labels, rendered once, and how
// much it grows per second (or, for a gauge, its value).
type series struct {
	text  string
	rate  float64
	gauge bool
}

// family is the series of one metric name, written together.
type family struct {
	name   string
	series []series
}

// families builds the series of pods [from, to) of m, by metric name.
func (m Mesh) families(from, to int) []family {
	fams := map[string]*family{}
	var order []string
	add := func(name, labels string, rate float64, gauge bool) {
		f := fams[name]
		if f == nil {
			f = &family{name: name}
			fams[name] = f
			order = append(order, name)
		}
		f.series = append(f.series, series{text: name + "{" + labels + "}", rate: rate, gauge: gauge})
	}
	// http adds one direction's HTTP series of a pod toward one workload.
	http := func(base string, rps, failure, meanMs float64) {
		add("request_total", base, rps, false)
		add("response_total", base+`,status_code="200",classification="success",grpc_status=""`, rps*(1-failure), false)
		add("response_total", base+`,status_code="500",classification="failure",grpc_status=""`, rps*failure, false)
		for _, le := range Buckets {
			add("response_latency_ms_bucket", base+`,le="`+strconv.FormatFloat(le, 'f', -1, 64)+`"`, rps*(1-math.Exp(-le/meanMs)), false)
		}
		add("response_latency_ms_bucket", base+`,le="+Inf"`, rps, false)
		add("response_latency_ms_sum", base, rps*meanMs, false)
		add("response_latency_ms_count", base, rps, false)
	}
	tcp := func(base string, conns, rps float64) {
		add("tcp_open_connections", base, conns, true)
		add("tcp_open_total", base, rps/100, false)
		add("tcp_close_total", base+`,classification="success",errno=""`, rps/100, false)
		add("tcp_read_bytes_total", base, rps*400, false)
		add("tcp_write_bytes_total", base, rps*1200, false)
	}
	for p := from; p < to; p++ {
		d := p / m.PodsPerDeployment
		dep := m.Deployment(d)
		pod := fmt.Sprintf("%s-5d8f7c-%d", dep.Name, p%m.PodsPerDeployment)
		ip := fmt.Sprintf("10.%d.%d.%d", p>>16&255, p>>8&255, p&255)
		target := `job="meshscope-proxy",instance="` + ip + `:4191",namespace="` + dep.Namespace +
			`",deployment="` + dep.Name + `",pod="` + pod + `"`
		add("up", target, 1, true)
		// One deployment in five is not on mutual TLS (its proxies have no
		// identity), for the dashboard's mTLS share.
		tls := `",tls="true"`
		if d%5 == 4 {
			tls = `",tls="no_identity",no_tls_reason="no_identity"`
		}
		in := target + `,direction="inbound",authority="` + dep.Name + "." + dep.Namespace + `:8080",target_addr="` + ip + `:8080` + tls
		http(in, dep.RPS, dep.Failure, dep.MeanMs)
		tcp(in+`,peer="src"`, 4, dep.RPS)
		for _, c := range dep.Calls {
			callee := m.Deployment(c)
			dst := target + `,direction="outbound",authority="` + callee.Name + "." + callee.Namespace + `:8080",target_addr="` +
				callee.Name + "." + callee.Namespace + `:8080` + tls + `,dst_namespace="` + callee.Namespace +
				`",dst_deployment="` + callee.Name + `"`
			http(dst, dep.RPS/2, callee.Failure, callee.MeanMs+1)
			tcp(dst+`,peer="dst"`, 2, dep.RPS/2)
		}
	}
	out := make([]family, 0, len(order))
	for _, name := range order {
		out = append(out, *fams[name])
	}
	return out
}

// SeriesPerPod is how many series one pod adds.
func (m Mesh) SeriesPerPod() int {
	n := 0
	for _, f := range m.families(0, 1) {
		n += len(f.series)
	}
	return n
}

// WriteOpenMetrics writes the samples of pods [from, to) from start to end
// (inclusive) every step as OpenMetrics text, family by family and, within
// a family, time by time, so every series' samples come in time order. A
// counter's value at t is its rate times the seconds since origin.
func (m Mesh) WriteOpenMetrics(w io.Writer, from, to int, origin, start, end time.Time, step time.Duration) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	var line []byte
	for _, f := range m.families(from, to) {
		for t := start; !t.After(end); t = t.Add(step) {
			elapsed := t.Sub(origin).Seconds()
			ts := strconv.FormatFloat(float64(t.UnixMilli())/1000, 'f', 3, 64)
			for _, s := range f.series {
				v := s.rate
				if !s.gauge {
					v *= elapsed
				}
				line = append(line[:0], s.text...)
				line = append(line, ' ')
				line = strconv.AppendFloat(line, v, 'g', -1, 64)
				line = append(line, ' ')
				line = append(line, ts...)
				line = append(line, '\n')
				if _, err := bw.Write(line); err != nil {
					return err
				}
			}
		}
	}
	if _, err := bw.WriteString("# EOF\n"); err != nil {
		return err
	}
	return bw.Flush()
}
