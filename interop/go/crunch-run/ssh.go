package main

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"syscall"

	"golang.org/x/crypto/ssh"
)

// sshServer runs an SSH server on each upgraded /ssh connection.
type sshServer struct {
	config  *ssh.ServerConfig
	workdir string
	logger  *log.Logger

	mu    sync.Mutex
	procs map[*exec.Cmd]struct{}
}

func newSSHServer(workdir string, logger *log.Logger) (*sshServer, error) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	signer, err := ssh.NewSignerFromKey(key)
	if err != nil {
		return nil, err
	}
	// Whoever got this far already proved knowledge of the auth secret through the HMAC
	// headers, so SSH-level authentication accepts anything the client offers.
	cfg := &ssh.ServerConfig{
		NoClientAuth: true,
		PublicKeyCallback: func(ssh.ConnMetadata, ssh.PublicKey) (*ssh.Permissions, error) {
			return &ssh.Permissions{}, nil
		},
		PasswordCallback: func(ssh.ConnMetadata, []byte) (*ssh.Permissions, error) {
			return &ssh.Permissions{}, nil
		},
	}
	cfg.AddHostKey(signer)
	return &sshServer{
		config:  cfg,
		workdir: workdir,
		logger:  logger,
		procs:   map[*exec.Cmd]struct{}{},
	}, nil
}

// handleUpgrade answers 101 and then speaks SSH on the raw connection.
func (s *sshServer) handleUpgrade(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form: "+err.Error(), http.StatusBadRequest)
		return
	}
	// detach_keys and no_forward only matter to a real container's docker exec; the
	// login user is logged so tests can see it arrived.
	login := r.Form.Get("login_username")
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "connection cannot be upgraded", http.StatusInternalServerError)
		return
	}
	conn, rw, err := hj.Hijack()
	if err != nil {
		s.logger.Printf("ssh: hijack: %v", err)
		return
	}
	defer conn.Close()
	fmt.Fprintf(rw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: ssh\r\nConnection: upgrade\r\n"+
		"%s: %s\r\n\r\n", hdrAuthResponse, w.Header().Get(hdrAuthResponse))
	if err := rw.Flush(); err != nil {
		s.logger.Printf("ssh: writing 101: %v", err)
		return
	}
	s.logger.Printf("ssh: session from %s, login_username %q", r.RemoteAddr, login)
	// The client may have sent its SSH banner right behind the request; those bytes sit in
	// the server's read buffer and must reach the SSH server first.
	s.serve(&bufferedConn{Conn: conn, r: rw.Reader})
}

func (s *sshServer) serve(conn net.Conn) {
	sconn, chans, reqs, err := ssh.NewServerConn(conn, s.config)
	if err != nil {
		s.logger.Printf("ssh: handshake: %v", err)
		return
	}
	defer sconn.Close()
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		if nc.ChannelType() != "session" {
			nc.Reject(ssh.Prohibited, "only session channels are supported")
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			s.logger.Printf("ssh: accepting channel: %v", err)
			continue
		}
		go s.session(ch, creqs)
	}
}

// session serves one "session" channel: env and pty requests, then one exec or shell.
func (s *sshServer) session(ch ssh.Channel, reqs <-chan *ssh.Request) {
	var env []string
	pty := false
	var running *exec.Cmd
	exited := make(chan struct{})
	for req := range reqs {
		ok := false
		switch req.Type {
		case "env":
			var kv struct{ Name, Value string }
			if ssh.Unmarshal(req.Payload, &kv) == nil {
				env = append(env, kv.Name+"="+kv.Value)
				ok = true
			}
		case "pty-req":
			// Limitation: no pseudo-terminal is allocated, the shell runs on pipes — it
			// would take a pty package, which Debian's gocode does not ship here.
			var p struct {
				Term          string
				Cols, Rows    uint32
				Width, Height uint32
				Modes         string
			}
			if ssh.Unmarshal(req.Payload, &p) == nil && p.Term != "" {
				env = append(env, "TERM="+p.Term)
			}
			pty, ok = true, true
		case "window-change":
			ok = true
		case "exec", "shell":
			if running != nil {
				break
			}
			args := []string{"sh"}
			if req.Type == "exec" {
				var c struct{ Command string }
				if ssh.Unmarshal(req.Payload, &c) != nil {
					break
				}
				args = []string{"sh", "-c", c.Command}
			} else if pty {
				args = []string{"sh", "-i"}
			}
			cmd, err := s.start(ch, args, env)
			if err != nil {
				s.logger.Printf("ssh: starting %q: %v", args, err)
				break
			}
			running, ok = cmd, true
			// Replying before the waiter starts keeps exit-status after the reply.
			req.Reply(true, nil)
			go s.wait(ch, cmd, exited)
			continue
		case "signal":
			var sig struct{ Name string }
			if running != nil && ssh.Unmarshal(req.Payload, &sig) == nil {
				if n, known := sshSignals[sig.Name]; known {
					syscall.Kill(-running.Process.Pid, n)
					ok = true
				}
			}
		}
		if req.WantReply {
			req.Reply(ok, nil)
		}
	}
	// The client closed the channel; a command still running has nobody to talk to.
	if running != nil {
		select {
		case <-exited:
		default:
			syscall.Kill(-running.Process.Pid, syscall.SIGKILL)
		}
	}
	ch.Close()
}

var sshSignals = map[string]syscall.Signal{
	"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "KILL": syscall.SIGKILL,
	"QUIT": syscall.SIGQUIT, "TERM": syscall.SIGTERM, "USR1": syscall.SIGUSR1,
	"USR2": syscall.SIGUSR2,
}

func (s *sshServer) start(ch ssh.Channel, args []string, env []string) (*exec.Cmd, error) {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = s.workdir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = ch
	cmd.Stderr = ch.Stderr()
	// A process group of its own lets a signal or a disconnect reach the command's children.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A pipe rather than cmd.Stdin = ch: Wait would otherwise block until the client
	// half-closes, which many clients never do after the command exits.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.procs[cmd] = struct{}{}
	s.mu.Unlock()
	go func() {
		io.Copy(stdin, ch)
		stdin.Close()
	}()
	return cmd, nil
}

func (s *sshServer) wait(ch ssh.Channel, cmd *exec.Cmd, exited chan<- struct{}) {
	err := cmd.Wait()
	close(exited)
	s.mu.Lock()
	delete(s.procs, cmd)
	s.mu.Unlock()
	status := uint32(0)
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		ws, _ := exitErr.Sys().(syscall.WaitStatus)
		if ws.Signaled() {
			status = 128 + uint32(ws.Signal())
		} else {
			status = uint32(ws.ExitStatus())
		}
	} else if err != nil {
		s.logger.Printf("ssh: waiting for command: %v", err)
		status = 255
	}
	ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{status}))
	ch.Close()
}

// closeAll kills every command still running, so that none outlives the gateway.
func (s *sshServer) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for cmd := range s.procs {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
}

// bufferedConn is a connection whose first bytes were already read into a bufio.Reader.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) {
	return c.r.Read(p)
}
