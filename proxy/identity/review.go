package identity

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"
	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshscope/meshscope/api/meshid"
)

// TokenReviewer says whom a bearer token authenticates, for the given audiences: Kubernetes' TokenReview.
// The issuer has two: the API server (KubeReviewer) and, outside a cluster, a file of tokens the demo's
// launcher writes (FileReviewer). Both answer the same Review, and the issuer decides from it alone.
type TokenReviewer interface {
	Review(ctx context.Context, token string, audiences []string) (Review, error)
}

// Review is a TokenReview's status: whether the token authenticated, as whom, for which of the audiences
// asked, and why not.
type Review struct {
	Authenticated bool
	User          string
	Audiences     []string
	Error         string
}

// prove returns the identity a review proves: an authenticated ServiceAccount token for meshid.Audience.
func prove(r Review) (string, error) {
	if !r.Authenticated {
		reason := r.Error
		if reason == "" {
			reason = "token not authenticated"
		}
		return "", fmt.Errorf("%w: %s", ErrNotProven, reason)
	}
	if !slices.Contains(r.Audiences, meshid.Audience) {
		return "", fmt.Errorf("%w: token is not for the audience %s", ErrNotProven, meshid.Audience)
	}
	name, err := nameOfUser(r.User)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrNotProven, err)
	}
	return name, nil
}

// ErrNotProven is the issuer's answer to a request whose token does not prove the name it asks for, or
// does not prove any.
var ErrNotProven = errors.New("identity not proven")

// serviceAccountPrefix begins the user name Kubernetes gives a ServiceAccount token: system:serviceaccount:<ns>:<sa>.
const serviceAccountPrefix = "system:serviceaccount:"

// nameOfUser returns the identity proven by a ServiceAccount token's user name.
func nameOfUser(user string) (string, error) {
	rest, ok := strings.CutPrefix(user, serviceAccountPrefix)
	if !ok {
		return "", fmt.Errorf("user %q is not a ServiceAccount", user)
	}
	ns, sa, ok := strings.Cut(rest, ":")
	name := meshid.Name(ns, sa)
	// ParseName checks both are RFC 1123 labels: a ServiceAccount name with a dot would parse back as
	// another namespace, and is refused.
	if pns, psa, err := meshid.ParseName(name); !ok || err != nil || pns != ns || psa != sa {
		return "", fmt.Errorf("user %q: want %s<namespace>:<name>", user, serviceAccountPrefix)
	}
	return name, nil
}

// KubeReviewer asks the API server (the issuer needs RBAC permission to create tokenreviews).
type KubeReviewer struct {
	Client kubernetes.Interface
}

// Review creates a TokenReview for token and audiences.
func (k KubeReviewer) Review(ctx context.Context, token string, audiences []string) (Review, error) {
	tr, err := k.Client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return Review{}, fmt.Errorf("token review: %w", err)
	}
	return Review{
		Authenticated: tr.Status.Authenticated,
		User:          tr.Status.User.Username,
		Audiences:     tr.Status.Audiences,
		Error:         tr.Status.Error,
	}, nil
}

// FileReviewer answers from a YAML (or JSON) file of tokens, re-read when it changes, for a mesh without
// an API server (the demo):
//
//	tokens:
//	  - token: 3f9a...                               # what the proxy sends (its --identity-token-file)
//	    user: system:serviceaccount:shop:web          # as Kubernetes names a ServiceAccount
//	    audiences: [identity.meshscope.io]
//
// A token not in the file does not authenticate; one listed authenticates for the audiences it lists
// that were asked for, as the API server's TokenReview does.
type FileReviewer struct {
	Path string

	mu      sync.Mutex
	modTime time.Time
	size    int64
	tokens  []fileToken
}

type fileToken struct {
	Token     string   `yaml:"token"`
	User      string   `yaml:"user"`
	Audiences []string `yaml:"audiences"`
}

// maxTokenFile bounds the tokens file.
const maxTokenFile = 1 << 20

// Review looks token up in the file.
func (f *FileReviewer) Review(_ context.Context, token string, audiences []string) (Review, error) {
	tokens, err := f.load()
	if err != nil {
		return Review{}, err
	}
	for _, t := range tokens {
		if subtle.ConstantTimeCompare([]byte(t.Token), []byte(token)) != 1 {
			continue
		}
		var aud []string
		for _, a := range audiences {
			if slices.Contains(t.Audiences, a) {
				aud = append(aud, a)
			}
		}
		if len(aud) == 0 {
			return Review{Error: "token audiences do not include the audiences asked for"}, nil
		}
		return Review{Authenticated: true, User: t.User, Audiences: aud}, nil
	}
	return Review{Error: "unknown token"}, nil
}

// load returns the file's tokens, reading it again when it changed.
func (f *FileReviewer) load() ([]fileToken, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fi, err := os.Stat(f.Path)
	if err != nil {
		return nil, err
	}
	if f.tokens != nil && fi.ModTime().Equal(f.modTime) && fi.Size() == f.size {
		return f.tokens, nil
	}
	file, err := os.Open(f.Path)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	data, err := io.ReadAll(io.LimitReader(file, maxTokenFile+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxTokenFile {
		return nil, fmt.Errorf("%s: larger than %d bytes", f.Path, maxTokenFile)
	}
	var doc struct {
		Tokens []fileToken `yaml:"tokens"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %v", f.Path, err)
	}
	for i, t := range doc.Tokens {
		if t.Token == "" {
			return nil, fmt.Errorf("%s: tokens[%d]: empty token", f.Path, i)
		}
	}
	if doc.Tokens == nil {
		doc.Tokens = []fileToken{}
	}
	f.tokens, f.modTime, f.size = doc.Tokens, fi.ModTime(), fi.Size()
	return f.tokens, nil
}

// WriteTokenFile writes a FileReviewer's file: each token mapped to its ServiceAccount user, for meshid.Audience.
func WriteTokenFile(path string, users map[string]string) error {
	var doc struct {
		Tokens []fileToken `yaml:"tokens"`
	}
	for token, user := range users {
		doc.Tokens = append(doc.Tokens, fileToken{Token: token, User: user, Audiences: []string{meshid.Audience}})
	}
	slices.SortFunc(doc.Tokens, func(a, b fileToken) int { return strings.Compare(a.User, b.User) })
	data, err := yaml.Marshal(doc)
	if err != nil {
		return err
	}
	return writeFile(path, data, 0o600)
}

// ServiceAccountUser is the user name Kubernetes gives a token of ServiceAccount sa in namespace ns.
func ServiceAccountUser(ns, sa string) string { return serviceAccountPrefix + ns + ":" + sa }
