package main

import (
	"context"
	"os"
	"time"

	"golang.org/x/net/webdav"
)

// writeFlags are the OpenFile flags that would change the tree.
const writeFlags = os.O_WRONLY | os.O_RDWR | os.O_CREATE | os.O_TRUNC | os.O_APPEND

// readOnlyFS serves a directory and refuses every change to it. The handler already answers
// writing methods with 405 before they get here; this keeps the files safe should a method
// ever slip past that check.
type readOnlyFS struct {
	dir webdav.Dir
}

func (fs readOnlyFS) Mkdir(ctx context.Context, name string, perm os.FileMode) error {
	return os.ErrPermission
}

func (fs readOnlyFS) OpenFile(ctx context.Context, name string, flag int,
	perm os.FileMode) (webdav.File, error) {
	if flag&writeFlags != 0 {
		return nil, os.ErrPermission
	}
	f, err := fs.dir.OpenFile(ctx, name, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	return readOnlyFile{f}, nil
}

func (fs readOnlyFS) RemoveAll(ctx context.Context, name string) error {
	return os.ErrPermission
}

func (fs readOnlyFS) Rename(ctx context.Context, oldName, newName string) error {
	return os.ErrPermission
}

func (fs readOnlyFS) Stat(ctx context.Context, name string) (os.FileInfo, error) {
	return fs.dir.Stat(ctx, name)
}

// readOnlyFile refuses writes even though the *os.File beneath was opened read-only, so
// the refusal does not depend on how the operating system reports it.
type readOnlyFile struct {
	webdav.File
}

func (f readOnlyFile) Write(p []byte) (int, error) {
	return 0, os.ErrPermission
}

// noLocks is a LockSystem for a tree that can't be changed: LOCK and UNLOCK never reach it,
// and every If-header condition on a read is simply granted.
type noLocks struct{}

func (noLocks) Confirm(now time.Time, name0, name1 string,
	conditions ...webdav.Condition) (func(), error) {
	return func() {}, nil
}

func (noLocks) Create(now time.Time, details webdav.LockDetails) (string, error) {
	return "", webdav.ErrLocked
}

func (noLocks) Refresh(now time.Time, token string,
	duration time.Duration) (webdav.LockDetails, error) {
	return webdav.LockDetails{}, webdav.ErrNoSuchLock
}

func (noLocks) Unlock(now time.Time, token string) error {
	return webdav.ErrNoSuchLock
}
