package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
)

// hmacHex returns hex(HMAC-SHA256(key, msg)), the one primitive behind every gateway secret:
// the auth secret from the root token, the request auth over the TLS certificate, and the
// response auth over the request auth.
func hmacHex(key, msg []byte) string {
	mac := hmac.New(sha256.New, key)
	mac.Write(msg)
	return hex.EncodeToString(mac.Sum(nil))
}
