package kubetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
)

// DryRun asks the API server to create every object in manifests (YAML or JSON documents; Lists
// are expanded) with dryRun=All and strict field validation, so a misspelt or unknown field fails
// as well as an invalid value; nothing is stored. The namespaces the objects name are created for
// real first, since the server refuses objects in a namespace that does not exist. The error names
// the first object refused and the server's reason.
func (s *Server) DryRun(ctx context.Context, manifests []byte) error {
	return s.create(ctx, manifests, []string{metav1.DryRunAll})
}

// Create creates every object in manifests, as DryRun checks them, for real: what `kubectl create
// -f` would do.
func (s *Server) Create(ctx context.Context, manifests []byte) error {
	return s.create(ctx, manifests, nil)
}

func (s *Server) create(ctx context.Context, manifests []byte, dryRun []string) error {
	objs, err := decodeAll(manifests)
	if err != nil {
		return err
	}
	groups, err := restmapper.GetAPIGroupResources(s.Client.Discovery())
	if err != nil {
		return fmt.Errorf("discovery: %w", err)
	}
	mapper := restmapper.NewDiscoveryRESTMapper(groups)
	dyn, err := dynamic.NewForConfig(s.Config)
	if err != nil {
		return err
	}
	for _, obj := range objs {
		gvk := obj.GroupVersionKind()
		name := strings.ToLower(gvk.Kind) + "/" + obj.GetName()
		mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		var client dynamic.ResourceInterface = dyn.Resource(mapping.Resource)
		if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
			ns := obj.GetNamespace()
			if ns == "" {
				ns = "default"
			}
			if err := s.ensureNamespace(ctx, ns); err != nil {
				return err
			}
			client = dyn.Resource(mapping.Resource).Namespace(ns)
		}
		_, err = client.Create(ctx, obj, metav1.CreateOptions{DryRun: dryRun, FieldValidation: "Strict"})
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}

func (s *Server) ensureNamespace(ctx context.Context, name string) error {
	_, err := s.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("namespace %s: %w", name, err)
	}
	return nil
}

// decodeAll reads every object of a YAML or JSON stream, the items of Lists in their place.
func decodeAll(manifests []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(manifests), 4096)
	var objs []*unstructured.Unstructured
	for {
		var m map[string]any
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("decode: %w", err)
		}
		if m == nil {
			continue
		}
		obj := &unstructured.Unstructured{Object: m}
		if obj.IsList() {
			list, err := obj.ToList()
			if err != nil {
				return nil, err
			}
			for i := range list.Items {
				objs = append(objs, &list.Items[i])
			}
			continue
		}
		objs = append(objs, obj)
	}
}
