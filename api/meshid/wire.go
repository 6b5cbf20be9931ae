package meshid

// The issuer's wire: HTTPS (TLS 1.3, the service presenting IssuerName's certificate), one JSON request
// and answer, both bounded.
//
//	POST /v1/certify  {"token": "<ServiceAccount token>", "csr": "<base64 DER certificate request>"}
//	200 {"chain": ["<base64 DER leaf>", "<base64 DER issuer>"]}
//	4xx/5xx {"error": "..."}: 400 a malformed request or CSR, 403 an identity not proven, 429 too many
//	requests (Retry-After), 503 the token could not be reviewed.
const CertifyPath = "/v1/certify"

// Bounds of the issuer's requests and answers.
const (
	MaxRequestBytes = 64 << 10
	MaxTokenBytes   = 16 << 10
)

// CertifyRequest is the body of POST CertifyPath.
type CertifyRequest struct {
	Token string `json:"token"`
	CSR   []byte `json:"csr"` // base64 in JSON
}

// CertifyResponse is the issuer's answer: the chain, leaf first, or why not.
type CertifyResponse struct {
	Chain [][]byte `json:"chain,omitempty"`
	Error string   `json:"error,omitempty"`
}
