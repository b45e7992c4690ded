/*
 * remove-tree: remove one directory tree (or a single non-directory) without ever using a
 * path longer than one component. Reports one JSON line on stdout.
 *
 *   remove-tree PATH
 *
 * Why a helper: Node's fs.rm joins names into absolute paths, so a tree deeper than
 * PATH_MAX (a hostile layer, a container's upper dir) fails with ENAMETOOLONG and can never
 * be removed, and whatever owns it is stuck. Here every operation is relative to the fd of
 * the directory being emptied:
 *  - entries are stat'ed and unlinked with *at() calls on one name; symlinks are never
 *    followed (AT_SYMLINK_NOFOLLOW, O_NOFOLLOW), so a link cannot redirect the removal;
 *  - the walk stays on PATH's filesystem: a mount point below it is an error, not something
 *    to empty (a leftover fuse-overlayfs mount must be unmounted, not deleted through);
 *  - fds are held for the top KEEP_OPEN levels only; deeper, a directory is reopened
 *    through ".." of its child and checked against the device/inode recorded on the way
 *    down, so depth costs no fds and a tree moved meanwhile stops the removal.
 * A missing PATH is success (removal is idempotent).
 */
#include "common.h"

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

#define KEEP_OPEN 256

struct frame {
  char name[256]; /* this directory's name in its parent */
  dev_t dev;
  ino_t ino;
  DIR *dir; /* NULL while closed (deeper than KEEP_OPEN below the current level) */
};

static struct frame *frames;
static size_t n_frames, cap_frames;
static uint64_t removed;
static dev_t root_dev;

static int open_dir_at(int parent, const char *name, const char *what) {
  int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0 && errno == EACCES) {
    /* A directory without search or read permission (mode 000 in a layer): make it ours. */
    if (fchmodat(parent, name, 0700, 0) == 0) fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  }
  if (fd < 0) FAIL_SYS("cannot open %s \"%.200s\"", what, name);
  return fd;
}

static int push(int parent_fd, const char *name) {
  if (strlen(name) >= sizeof(frames[0].name)) FAIL("name too long: \"%.200s\"", name);
  int fd;
  TRY(fd = open_dir_at(parent_fd, name, "directory"));
  struct stat st;
  if (fstat(fd, &st) < 0) {
    close(fd);
    FAIL_SYS("cannot stat \"%.200s\"", name);
  }
  if (n_frames > 0 && st.st_dev != root_dev) {
    close(fd);
    FAIL_KIND("mount", "\"%.200s\" is a mount point; unmount it first", name);
  }
  if (n_frames == cap_frames) {
    cap_frames = cap_frames ? cap_frames * 2 : 64;
    struct frame *grown = realloc(frames, cap_frames * sizeof(*frames));
    if (grown == NULL) {
      close(fd);
      FAIL_SYS("allocating");
    }
    frames = grown;
  }
  struct frame *f = &frames[n_frames];
  snprintf(f->name, sizeof(f->name), "%s", name);
  f->dev = st.st_dev;
  f->ino = st.st_ino;
  if ((f->dir = fdopendir(fd)) == NULL) {
    close(fd);
    FAIL_SYS("cannot list \"%.200s\"", name);
  }
  n_frames++;
  /* Deep trees: give back the fd of the level KEEP_OPEN above; it is reopened on the way up. */
  if (n_frames > KEEP_OPEN + 1) {
    struct frame *old = &frames[n_frames - 2 - KEEP_OPEN];
    if (old->dir != NULL) closedir(old->dir), old->dir = NULL;
  }
  return 0;
}

/* Makes frames[i] open again, through ".." of frames[i + 1] (which is open). */
static int reopen(size_t i) {
  struct frame *f = &frames[i], *child = &frames[i + 1];
  int fd = openat(dirfd(child->dir), "..", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) FAIL_SYS("cannot reopen the parent of \"%.200s\"", child->name);
  struct stat st;
  if (fstat(fd, &st) < 0 || st.st_dev != f->dev || st.st_ino != f->ino) {
    close(fd);
    FAIL_KIND("moved", "the tree changed while it was being removed (\"%.200s\" moved)", f->name);
  }
  if ((f->dir = fdopendir(fd)) == NULL) {
    close(fd);
    FAIL_SYS("cannot list \"%.200s\"", f->name);
  }
  return 0;
}

/* Empties and removes the tree whose top is frames[0]; top_parent is the fd it lives in. */
static int remove_all(int top_parent) {
  while (n_frames > 0) {
    struct frame *cur = &frames[n_frames - 1];
    errno = 0;
    struct dirent *de = readdir(cur->dir);
    if (de == NULL && errno != 0) FAIL_SYS("cannot list \"%.200s\"", cur->name);
    if (de != NULL) {
      if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
      struct stat st;
      if (fstatat(dirfd(cur->dir), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        if (errno == ENOENT) continue;
        FAIL_SYS("cannot stat \"%.200s\"", de->d_name);
      }
      if (S_ISDIR(st.st_mode)) {
        TRY(push(dirfd(cur->dir), de->d_name));
      } else if (unlinkat(dirfd(cur->dir), de->d_name, 0) < 0 && errno != ENOENT) {
        FAIL_SYS("cannot remove \"%.200s\"", de->d_name);
      } else {
        removed++;
      }
      continue;
    }
    /* Empty now: remove it from its parent, which must be open for that. */
    if (n_frames >= 2 && frames[n_frames - 2].dir == NULL) TRY(reopen(n_frames - 2));
    int parent = n_frames >= 2 ? dirfd(frames[n_frames - 2].dir) : top_parent;
    closedir(cur->dir);
    cur->dir = NULL;
    if (unlinkat(parent, cur->name, AT_REMOVEDIR) < 0 && errno != ENOENT)
      FAIL_SYS("cannot remove directory \"%.200s\"", cur->name);
    removed++;
    n_frames--;
  }
  return 0;
}

static int remove_path(const char *path) {
  _cleanup_free_ char *dir_copy = strdup(path), *base_copy = strdup(path);
  if (dir_copy == NULL || base_copy == NULL) FAIL_SYS("allocating");
  const char *parent_path = dirname(dir_copy), *base = basename(base_copy);
  if (strcmp(base, "/") == 0 || strcmp(base, ".") == 0 || strcmp(base, "..") == 0)
    FAIL_KIND("usage", "refusing to remove \"%.200s\"", path);
  /* The given path itself may go through symlinks (a configured root dir); below it, nothing does. */
  _cleanup_fd_ int parent = open(parent_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (parent < 0) {
    if (errno == ENOENT) return 0;
    FAIL_SYS("cannot open \"%.200s\"", parent_path);
  }
  struct stat st;
  if (fstatat(parent, base, &st, AT_SYMLINK_NOFOLLOW) < 0) {
    if (errno == ENOENT) return 0;
    FAIL_SYS("cannot stat \"%.200s\"", path);
  }
  if (!S_ISDIR(st.st_mode)) {
    if (unlinkat(parent, base, 0) < 0 && errno != ENOENT) FAIL_SYS("cannot remove \"%.200s\"", path);
    removed++;
    return 0;
  }
  root_dev = st.st_dev;
  TRY(push(parent, base));
  return remove_all(parent);
}

int main(int argc, char **argv) {
  if (argc != 2 || argv[1][0] == '\0') {
    set_error("usage", 0, "usage: remove-tree PATH");
    report_failure_and_exit(2);
  }
  if (remove_path(argv[1]) < 0) report_failure_and_exit(1);
  printf("{\"ok\":true,\"removed\":%" PRIu64 "}\n", removed);
  return fflush(stdout) == 0 ? 0 : 1;
}
