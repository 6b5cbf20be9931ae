package kube

import _ "embed"

// PrometheusConfig is the Prometheus configuration that scrapes every meshed pod's proxy in a
// cluster through kubernetes_sd_configs, with the target labels the dashboard's queries use.
//
//go:embed prometheus-kubernetes.yml
var PrometheusConfig string
