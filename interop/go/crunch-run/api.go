package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"strings"
	"time"
)

// apiClient updates the container record, the way crunch-run tells the controller where its
// gateway can be reached.
type apiClient struct {
	baseURL string
	token   string
	client  *http.Client
	uuid    string
}

// newAPIClient returns nil when no -api-url was given.
func newAPIClient(cfg *config) *apiClient {
	if cfg.apiURL == "" {
		return nil
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = &tls.Config{InsecureSkipVerify: cfg.insecure}
	return &apiClient{
		baseURL: cfg.apiURL,
		token:   cfg.apiToken,
		client:  &http.Client{Transport: transport, Timeout: 30 * time.Second},
		uuid:    cfg.uuid,
	}
}

// setGatewayAddress PUTs gateway_address and reports the outcome as an event.
func (a *apiClient) setGatewayAddress(ctx context.Context, address string, events eventSink,
	logger *log.Logger) {
	status, err := a.put(ctx, address)
	if err != nil {
		logger.Printf("setting gateway_address %q: %v", address, err)
		events.emit("api_error", "gateway_address", address, "status", status,
			"error", err.Error())
		return
	}
	logger.Printf("set gateway_address %q", address)
	events.emit("gateway_address_set", "gateway_address", address, "status", status)
}

func (a *apiClient) put(ctx context.Context, address string) (int, error) {
	body, err := json.Marshal(map[string]interface{}{
		"container": map[string]string{"gateway_address": address},
	})
	if err != nil {
		return 0, err
	}
	u := a.baseURL + "/arvados/v1/containers/" + a.uuid
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	text, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return resp.StatusCode, fmt.Errorf("API answered %s: %s", resp.Status,
			strings.TrimSpace(string(text)))
	}
	return resp.StatusCode, nil
}
