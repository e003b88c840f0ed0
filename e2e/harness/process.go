package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// Process is a child process (an apiserver, an agent or an echo server),
// optionally inside a network namespace, logging to a file.
type Process struct {
	Name string
	Log  string // path of its stdout+stderr
	cmd  *exec.Cmd
	done chan struct{} // closed by the goroutine that reaps cmd
}

// StartProcess starts bin with args, inside ns when ns is not nil.
func StartProcess(name, logPath string, ns *NS, bin string, args ...string) (*Process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	var cmd *exec.Cmd
	if ns != nil {
		cmd = exec.Command("nsenter", append([]string{"--net=" + ns.Path(), "--", bin}, args...)...)
	} else {
		cmd = exec.Command(bin, args...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	// The child dies with the harness, even when that is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Process{Name: name, Log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		_ = cmd.Wait()
		logf.Close()
	}()
	return p, nil
}

// Pid is the process's id (nsenter execs the program: the same process).
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM, waits up to grace, then kills the process group.
func (p *Process) Stop(grace time.Duration) {
	if p == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	p.Kill()
}

// Kill ends the process group at once and waits until it is reaped.
func (p *Process) Kill() {
	if p == nil {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// LogTail returns the last n bytes of the process's log.
func (p *Process) LogTail(n int) string {
	b, err := os.ReadFile(p.Log)
	if err != nil {
		return err.Error()
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// Binaries are the built programs the harness runs.
type Binaries struct {
	APIServer, Agent, CLI, Echo string
}

// Build compiles the clustermesh-apiserver, agent, CLI and the echo server
// into dir/bin with the go command, from the module that holds modDir.
func Build(ctx context.Context, modDir, dir string) (Binaries, error) {
	bin := filepath.Join(dir, "bin")
	b := Binaries{
		APIServer: filepath.Join(bin, "clustermesh-apiserver"),
		Agent:     filepath.Join(bin, "clustermesh-agent"),
		CLI:       filepath.Join(bin, "clustermesh"),
		Echo:      filepath.Join(bin, "echo"),
	}
	for out, pkg := range map[string]string{
		b.APIServer: "./clustermesh-apiserver", b.Agent: "./agent", b.CLI: "./cmd/clustermesh", b.Echo: "./e2e/cmd/echo",
	} {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
		cmd.Dir = modDir
		if o, err := cmd.CombinedOutput(); err != nil {
			return b, fmt.Errorf("go build %s: %w: %s", pkg, err, o)
		}
	}
	return b, nil
}
