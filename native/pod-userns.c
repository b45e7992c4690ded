/*
 * pod-userns: a pod's own user namespace inside the rootless node (hostUsers: false), and the
 * check whether a mount source can be id-mapped into it. Reports one JSON line on stdout.
 *
 *   pod-userns create --uid-map C:H:N[,C:H:N...] --gid-map C:H:N[,...] --pin user=PATH
 *                     [--pin net=PATH] [--pin ipc=PATH] [--pin uts=PATH]
 *   pod-userns idmap-check --userns PATH SOURCE
 *   pod-userns views --dir DIR SOURCE...
 *   pod-userns release --dir DIR
 *
 * create: a child unshares a user namespace together with the pod's net/ipc/uts namespaces,
 * so those are owned by the pod's user namespace (pod root may then bind low ports, set its
 * hostname and namespaced sysctls, and mount /proc and /sys in its containers). The parent,
 * uid 0 of the node, writes the child's uid_map and gid_map (a privileged writer may map any
 * range of the node; newuidmap would look up /etc/subuid for "root", which has none) and
 * bind-mounts the child's namespace files onto the pin files (they must exist). The child
 * then exits; the pins keep the namespaces. util-linux unshare cannot do this: its
 * --map-users runs newuidmap, and its own pinning of a user namespace is refused (EPERM).
 * On any failure, pins already mounted are detached again.
 *
 * idmap-check: whether the kernel lets SOURCE be mounted id-mapped with the user namespace
 * pinned at PATH: open_tree(OPEN_TREE_CLONE) then mount_setattr(MOUNT_ATTR_IDMAP) on the
 * detached copy, which is dropped when the helper exits. Inside a rootless node this works
 * for a tmpfs the node mounted, and fails with EPERM (host filesystems) or EINVAL (overlay,
 * FUSE); {"ok":true,"idmap":false,"errno":...} says which.
 *
 * views / release: crun 1.8.1 resolves a container's rootfs and bind-mount sources inside the
 * container's process once it has joined the pod's user namespace, where the node's private
 * directories (0700, owned by the node's root) cannot be searched. `views` makes DIR (0711; its
 * parent must exist and be searchable by everyone) and bind-mounts each SOURCE, non-recursively
 * and private, on DIR/0, DIR/1, ... (a file for a file, a directory for anything else); the
 * caller hands those paths to crun and calls `release` once the container is created (its mount
 * namespace keeps its own copies). `release` detaches every entry of DIR and removes DIR; a
 * missing DIR is fine. A failed `views` releases what it made.
 */
#include "common.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/mount.h>
#include <dirent.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define MAX_EXTENTS 340 /* the kernel's limit of lines in a uid_map */
#define MAX_PINS 4

struct pin {
  const char *kind; /* user, net, ipc, uts */
  const char *path;
  bool mounted;
};

/* "C:H:N,C:H:N" -> "C H N\nC H N\n" in out; every number a uint32, N > 0. */
static int parse_map(const char *what, const char *spec, char *out, size_t out_size) {
  size_t used = 0;
  int extents = 0;
  const char *p = spec;
  while (*p != '\0') {
    unsigned long long v[3];
    for (int i = 0; i < 3; i++) {
      char *end;
      errno = 0;
      if (*p < '0' || *p > '9') FAIL_KIND("usage", "%s: \"%.200s\" is not C:H:N[,C:H:N...]", what, spec);
      v[i] = strtoull(p, &end, 10);
      if (errno != 0 || v[i] > UINT32_MAX) FAIL_KIND("usage", "%s: number out of range in \"%.200s\"", what, spec);
      p = end;
      if (i < 2) {
        if (*p != ':') FAIL_KIND("usage", "%s: \"%.200s\" is not C:H:N[,C:H:N...]", what, spec);
        p++;
      }
    }
    if (v[2] == 0) FAIL_KIND("usage", "%s: an extent of length 0 in \"%.200s\"", what, spec);
    if (++extents > MAX_EXTENTS) FAIL_KIND("usage", "%s: more than %d extents", what, MAX_EXTENTS);
    int n = snprintf(out + used, out_size - used, "%llu %llu %llu\n", v[0], v[1], v[2]);
    if (n < 0 || (size_t)n >= out_size - used) FAIL_KIND("usage", "%s: too long", what);
    used += (size_t)n;
    if (*p == ',') p++;
    else if (*p != '\0') FAIL_KIND("usage", "%s: \"%.200s\" is not C:H:N[,C:H:N...]", what, spec);
  }
  if (extents == 0) FAIL_KIND("usage", "%s is empty", what);
  return 0;
}

static int write_map(pid_t pid, const char *file, const char *text) {
  char path[64];
  snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, file);
  _cleanup_fd_ int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) FAIL_SYS("cannot open %s", path);
  /* One write: the kernel takes the whole map at once, or nothing. */
  ssize_t n = write(fd, text, strlen(text));
  if (n < 0) FAIL_SYS("the kernel refused the %s \"%.300s\"", file, text);
  if ((size_t)n != strlen(text)) FAIL_KIND("system", "short write to %s", path);
  return 0;
}

static int ns_flag(const char *kind) {
  if (strcmp(kind, "net") == 0) return CLONE_NEWNET;
  if (strcmp(kind, "ipc") == 0) return CLONE_NEWIPC;
  if (strcmp(kind, "uts") == 0) return CLONE_NEWUTS;
  if (strcmp(kind, "user") == 0) return CLONE_NEWUSER;
  return -1;
}

/* The child: unshare, say so (0 or its errno) on ready_fd, wait for go_fd to close. */
__attribute__((noreturn)) static void child_main(int flags, int ready_fd, int go_fd) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  int err = unshare(flags) < 0 ? errno : 0;
  (void)!write(ready_fd, &err, sizeof(err));
  close(ready_fd);
  char byte;
  while (read(go_fd, &byte, 1) > 0) {
  }
  _exit(0);
}

static int pin_all(pid_t pid, struct pin *pins, int n_pins) {
  for (int i = 0; i < n_pins; i++) {
    char source[64];
    snprintf(source, sizeof(source), "/proc/%d/ns/%s", (int)pid, pins[i].kind);
    if (mount(source, pins[i].path, NULL, MS_BIND, NULL) < 0)
      FAIL_SYS("cannot pin the %s namespace on %.300s", pins[i].kind, pins[i].path);
    pins[i].mounted = true;
  }
  return 0;
}

static int create(const char *uid_spec, const char *gid_spec, struct pin *pins, int n_pins) {
  static char uid_map[MAX_EXTENTS * 36], gid_map[MAX_EXTENTS * 36];
  TRY(parse_map("--uid-map", uid_spec, uid_map, sizeof(uid_map)));
  TRY(parse_map("--gid-map", gid_spec, gid_map, sizeof(gid_map)));
  int flags = 0;
  bool have_user = false;
  for (int i = 0; i < n_pins; i++) {
    int flag = ns_flag(pins[i].kind);
    if (flag < 0) FAIL_KIND("usage", "unknown namespace kind \"%.50s\" (user, net, ipc, uts)", pins[i].kind);
    if (flags & flag) FAIL_KIND("usage", "the %s namespace is pinned twice", pins[i].kind);
    flags |= flag;
    if (flag == CLONE_NEWUSER) have_user = true;
  }
  if (!have_user) FAIL_KIND("usage", "--pin user=PATH is required");

  int ready[2], go[2];
  if (pipe2(ready, O_CLOEXEC) < 0 || pipe2(go, O_CLOEXEC) < 0) FAIL_SYS("pipe");
  pid_t pid = fork();
  if (pid < 0) FAIL_SYS("fork");
  if (pid == 0) {
    close(ready[0]);
    close(go[1]);
    child_main(flags, ready[1], go[0]);
  }
  close(ready[1]);
  close(go[0]);
  int child_err = -1;
  ssize_t got = read(ready[0], &child_err, sizeof(child_err));
  close(ready[0]);
  int rc = 0;
  if (got != (ssize_t)sizeof(child_err)) {
    set_error("system", 0, "the namespace child exited before it unshared");
    rc = -1;
  } else if (child_err != 0) {
    set_error("system", child_err, "unshare of the pod namespaces failed");
    rc = -1;
  }
  if (rc == 0) rc = write_map(pid, "uid_map", uid_map);
  if (rc == 0) rc = write_map(pid, "gid_map", gid_map);
  if (rc == 0) rc = pin_all(pid, pins, n_pins);
  if (rc < 0) {
    for (int i = 0; i < n_pins; i++)
      if (pins[i].mounted) umount2(pins[i].path, MNT_DETACH);
  }
  close(go[1]);
  int status;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return rc;
}

static int idmap_check(const char *userns_path, const char *source) {
  _cleanup_fd_ int userns = open(userns_path, O_RDONLY | O_CLOEXEC);
  if (userns < 0) FAIL_SYS("cannot open the user namespace %.300s", userns_path);
  _cleanup_fd_ int tree = (int)open_tree(AT_FDCWD, source, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
  if (tree < 0) FAIL_SYS("cannot clone the mount of %.300s", source);
  struct mount_attr attr = {.attr_set = MOUNT_ATTR_IDMAP, .userns_fd = (uint64_t)userns};
  if (mount_setattr(tree, "", AT_EMPTY_PATH, &attr, sizeof(attr)) < 0) {
    int err = errno;
    fputs("{\"ok\":true,\"idmap\":false,\"errno\":", stdout);
    json_string(stdout, strerrorname_np(err) ? strerrorname_np(err) : "unknown");
    fputs(",\"error\":", stdout);
    json_string(stdout, strerror(err));
    fputs("}\n", stdout);
    return 0;
  }
  fputs("{\"ok\":true,\"idmap\":true}\n", stdout);
  return 0;
}

/* Detaches and removes every entry of dir, then dir itself. */
static int release_views(const char *dir) {
  DIR *d = opendir(dir);
  if (d == NULL) {
    if (errno == ENOENT) return 0;
    FAIL_SYS("cannot open %.300s", dir);
  }
  int rc = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    char entry[4096];
    if (snprintf(entry, sizeof(entry), "%s/%s", dir, e->d_name) >= (int)sizeof(entry)) continue;
    if (umount2(entry, MNT_DETACH | UMOUNT_NOFOLLOW) < 0 && errno != EINVAL && errno != ENOENT) {
      set_error("system", errno, "cannot unmount %.300s", entry);
      rc = -1;
      continue;
    }
    if (rmdir(entry) < 0 && (errno != ENOTDIR || unlink(entry) < 0) && errno != ENOENT) {
      set_error("system", errno, "cannot remove %.300s", entry);
      rc = -1;
    }
  }
  closedir(d);
  if (rc == 0 && rmdir(dir) < 0 && errno != ENOENT) FAIL_SYS("cannot remove %.300s", dir);
  return rc;
}

static int make_views(const char *dir, char **sources, int n) {
  if (mkdir(dir, 0711) < 0) FAIL_SYS("cannot create %.300s", dir);
  /* mkdir's mode is cut by the umask; the pod's root must be able to search it. */
  if (chmod(dir, 0711) < 0) FAIL_SYS("cannot chmod %.300s", dir);
  for (int i = 0; i < n; i++) {
    char target[4096];
    snprintf(target, sizeof(target), "%s/%d", dir, i);
    struct stat st;
    if (stat(sources[i], &st) < 0) FAIL_SYS("cannot stat %.300s", sources[i]);
    if (S_ISDIR(st.st_mode)) {
      if (mkdir(target, 0711) < 0) FAIL_SYS("cannot create %.300s", target);
    } else {
      int fd = open(target, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
      if (fd < 0) FAIL_SYS("cannot create %.300s", target);
      close(fd);
    }
    if (mount(sources[i], target, NULL, MS_BIND, NULL) < 0) FAIL_SYS("cannot bind %.300s on %.300s", sources[i], target);
    if (mount(NULL, target, NULL, MS_PRIVATE, NULL) < 0) FAIL_SYS("cannot make %.300s private", target);
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 2 && strcmp(argv[1], "create") == 0) {
    const char *uid_spec = NULL, *gid_spec = NULL;
    struct pin pins[MAX_PINS];
    int n_pins = 0;
    for (int i = 2; i < argc; i++) {
      if (strcmp(argv[i], "--uid-map") == 0 && i + 1 < argc) {
        uid_spec = argv[++i];
      } else if (strcmp(argv[i], "--gid-map") == 0 && i + 1 < argc) {
        gid_spec = argv[++i];
      } else if (strcmp(argv[i], "--pin") == 0 && i + 1 < argc) {
        char *spec = argv[++i];
        char *eq = strchr(spec, '=');
        if (eq == NULL || eq[1] != '/' || n_pins == MAX_PINS) {
          set_error("usage", 0, "--pin takes KIND=/absolute/path, at most %d times", MAX_PINS);
          report_failure_and_exit(2);
        }
        *eq = '\0';
        pins[n_pins++] = (struct pin){.kind = spec, .path = eq + 1, .mounted = false};
      } else {
        set_error("usage", 0, "unknown argument \"%.100s\"", argv[i]);
        report_failure_and_exit(2);
      }
    }
    if (uid_spec == NULL || gid_spec == NULL) {
      set_error("usage", 0, "create needs --uid-map and --gid-map");
      report_failure_and_exit(2);
    }
    if (create(uid_spec, gid_spec, pins, n_pins) < 0) report_failure_and_exit(1);
    fputs("{\"ok\":true}\n", stdout);
    return 0;
  }
  if (argc >= 4 && strcmp(argv[1], "views") == 0 && strcmp(argv[2], "--dir") == 0 && argv[3][0] == '/') {
    if (make_views(argv[3], argv + 4, argc - 4) < 0) {
      (void)release_views(argv[3]); /* the first error (the cause) is the one reported */
      report_failure_and_exit(1);
    }
    fputs("{\"ok\":true}\n", stdout);
    return 0;
  }
  if (argc == 4 && strcmp(argv[1], "release") == 0 && strcmp(argv[2], "--dir") == 0 && argv[3][0] == '/') {
    if (release_views(argv[3]) < 0) report_failure_and_exit(1);
    fputs("{\"ok\":true}\n", stdout);
    return 0;
  }
  if (argc == 5 && strcmp(argv[1], "idmap-check") == 0 && strcmp(argv[2], "--userns") == 0) {
    if (idmap_check(argv[3], argv[4]) < 0) report_failure_and_exit(1);
    return 0;
  }
  set_error("usage", 0,
            "usage: pod-userns create --uid-map C:H:N[,...] --gid-map C:H:N[,...] --pin user=PATH "
            "[--pin net|ipc|uts=PATH]... | pod-userns idmap-check --userns PATH SOURCE | "
            "pod-userns views --dir DIR SOURCE... | pod-userns release --dir DIR");
  report_failure_and_exit(2);
}
