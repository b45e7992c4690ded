/*
 * layer-unpack: unpack one OCI layer from stdin into an empty directory, turning OCI
 * whiteouts into what overlay readers (kernel overlay with userxattr, fuse-overlayfs)
 * understand. Reports one JSON line on stdout, with the diff_id (sha256 of the tar stream).
 *
 * The layer arrives as its blob (--compression=gzip|zstd, or none for a plain tar) and is
 * decompressed and hashed here, beside the untar: the daemon only pipes the blob's bytes.
 * Decompressing in the daemon cost its one thread a chunk callback, a fresh buffer and a
 * pipe write for every 256 KiB of tar, and a second sha256 pass; here it is a short-lived,
 * unprivileged process (a zlib or zstd bug is contained in it). Strict like containerd's Go
 * readers: a gzip stream may hold several members, but anything else after the last one is
 * an error; zstd may hold several frames and skippable frames (zstd:chunked), nothing else.
 * Decompressed bytes count against --max-bytes, so a bomb stops at the limit.
 *
 * Safe by construction (no path string is ever trusted to stay inside the layer):
 *  - Names are cleaned lexically as if rooted at "/" (".." never climbs above the root),
 *    like containerd's filepath.Join("/", name). The parent directory is then opened with
 *    openat2(RESOLVE_IN_ROOT|RESOLVE_NO_SYMLINKS) when it is a plain directory chain of the
 *    layer; otherwise it is resolved through the merged view of the layer over the layers
 *    below (see "the merged view"), one name at a time relative to directory fds, symlinks
 *    resolved by this code inside the root (the fs.RootPath/securejoin semantics). The
 *    final component is created relative to that parent fd with O_EXCL/O_NOFOLLOW calls.
 *  - An entry's path may not exceed --max-path bytes, cleaned or resolved, so every file
 *    of a layer stays reachable by path on the host (and removable, see remove-tree.c).
 *  - Nothing is cached between entries: every entry re-resolves its parent, so an entry
 *    that swaps a directory for a symlink cannot redirect later ones (CVE-2025-47290).
 *  - Metadata is applied on an fd we created, or with AT_SYMLINK_NOFOLLOW; symlinks are
 *    never chmod'ed; hardlink entries get no metadata of their own (CVE-2021-32760).
 *  - Entries that resolve to the root only update the root's metadata (CVE-2021-29136).
 * There is deliberately no fallback when openat2 is missing.
 */
#include "common.h"

#include <dirent.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <linux/openat2.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
/* The low-level SHA-256 calls: deprecated in OpenSSL 3 in favour of EVP, which would link
 * the provider machinery into this static helper for one digest. Same assembly either way. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>
#include <zlib.h>
#include <zstd.h>

#define BLOCK 512
#define META_MAX (1u << 20)  /* PAX / GNU long name payload */
#define MAX_WARNINGS 64
#define MAX_XATTRS 128

static struct {
  uint64_t max_bytes, max_entries, max_depth, max_path, uid_max, gid_max;
  int64_t squash; /* -1: out-of-range IDs are an error */
} opt = {UINT64_C(16) << 30, 2000000, 256, 3840, 65535, 65535, -1};

static struct {
  unsigned char buf[1 << 20];
  size_t pos, len;
  uint64_t total;
} in;

/* The blob as read from stdin, before decompression. */
static enum { COMPRESSION_NONE, COMPRESSION_GZIP, COMPRESSION_ZSTD } compression = COMPRESSION_NONE;
static struct {
  unsigned char buf[1 << 20];
  z_stream z;
  bool member_ended; /* a gzip member ended; another may follow */
  ZSTD_DCtx *zstd;
  ZSTD_inBuffer zin;
  size_t zstd_hint; /* ZSTD_decompressStream's last return: 0 when a frame just ended */
} blob = {.zstd_hint = 1};
static SHA256_CTX diff_id;

static char *warnings[MAX_WARNINGS];
static size_t n_warnings;

__attribute__((format(printf, 1, 2))) static void warn(const char *fmt, ...) {
  n_warnings++;
  if (n_warnings > MAX_WARNINGS) return;
  va_list ap;
  va_start(ap, fmt);
  if (vasprintf(&warnings[n_warnings - 1], fmt, ap) < 0) warnings[--n_warnings] = NULL;
  va_end(ap);
}

/* ---- input ---------------------------------------------------------------------- */

/* Reads stdin into dst: the bytes read, 0 at its end, -1 on error. */
static ssize_t read_stdin(unsigned char *dst, size_t cap) {
  ssize_t n;
  do n = read(STDIN_FILENO, dst, cap);
  while (n < 0 && errno == EINTR);
  if (n < 0) FAIL_SYS("reading the layer stream");
  return n;
}

static int open_decompressor(void) {
  if (compression == COMPRESSION_GZIP && inflateInit2(&blob.z, 16 + MAX_WBITS) != Z_OK)
    FAIL_KIND("system", "cannot start gzip decompression");
  if (compression == COMPRESSION_ZSTD && (blob.zstd = ZSTD_createDCtx()) == NULL)
    FAIL_KIND("system", "cannot start zstd decompression");
  return 0;
}

/* Up to cap bytes of the gzip stream's output: the count, 0 once it has ended, -1 on error. */
static ssize_t gunzip_some(unsigned char *out, size_t cap) {
  blob.z.next_out = out;
  blob.z.avail_out = (uInt)cap;
  while (blob.z.avail_out == cap) {
    if (blob.z.avail_in == 0) {
      ssize_t n = read_stdin(blob.buf, sizeof(blob.buf));
      TRY(n);
      if (n == 0 && blob.member_ended) return 0;
      if (n == 0) FAIL_KIND("compression", "the gzip stream ends early (truncated blob)");
      blob.z.next_in = blob.buf;
      blob.z.avail_in = (uInt)n;
    }
    if (blob.member_ended) {
      if (blob.z.next_in[0] != 0x1f)
        FAIL_KIND("compression", "data that is not gzip follows the end of the gzip stream");
      if (inflateReset(&blob.z) != Z_OK) FAIL_KIND("system", "cannot restart gzip decompression");
      blob.member_ended = false;
    }
    int rc = inflate(&blob.z, Z_NO_FLUSH);
    if (rc == Z_STREAM_END) blob.member_ended = true;
    else if (rc != Z_OK && !(rc == Z_BUF_ERROR && blob.z.avail_in == 0))
      FAIL_KIND("compression", "invalid gzip data: %.200s", blob.z.msg != NULL ? blob.z.msg : zError(rc));
  }
  return (ssize_t)(cap - blob.z.avail_out);
}

/* Up to cap bytes of the zstd stream's output: the count, 0 once it has ended, -1 on error. */
static ssize_t unzstd_some(unsigned char *out, size_t cap) {
  ZSTD_outBuffer o = {out, cap, 0};
  while (o.pos == 0) {
    if (blob.zin.pos == blob.zin.size) {
      ssize_t n = read_stdin(blob.buf, sizeof(blob.buf));
      TRY(n);
      if (n == 0 && blob.zstd_hint == 0) return 0;
      if (n == 0) FAIL_KIND("compression", "the zstd stream ends early (truncated blob)");
      blob.zin = (ZSTD_inBuffer){blob.buf, (size_t)n, 0};
    }
    size_t rc = ZSTD_decompressStream(blob.zstd, &o, &blob.zin);
    if (ZSTD_isError(rc)) FAIL_KIND("compression", "invalid zstd data: %.200s", ZSTD_getErrorName(rc));
    blob.zstd_hint = rc;
  }
  return (ssize_t)o.pos;
}

static int fill(void) {
  if (in.pos < in.len) return 1;
  ssize_t n = compression == COMPRESSION_GZIP   ? gunzip_some(in.buf, sizeof(in.buf))
              : compression == COMPRESSION_ZSTD ? unzstd_some(in.buf, sizeof(in.buf))
                                                : read_stdin(in.buf, sizeof(in.buf));
  TRY(n);
  SHA256_Update(&diff_id, in.buf, (size_t)n);
  in.pos = 0;
  in.len = (size_t)n;
  in.total += (uint64_t)n;
  if (in.total > opt.max_bytes)
    FAIL_KIND("limit", "uncompressed layer is larger than the limit of %" PRIu64 " bytes", opt.max_bytes);
  return n > 0;
}

/* Copies n bytes of the stream to fd (or drops them when fd < 0). */
static int copy_out(int fd, uint64_t n, const char *name) {
  while (n > 0) {
    int more = fill();
    TRY(more);
    if (more == 0) FAIL("truncated archive: data of \"%.200s\" ends early", name);
    size_t chunk = in.len - in.pos;
    if (chunk > n) chunk = (size_t)n;
    for (size_t done = 0; fd >= 0 && done < chunk;) {
      ssize_t w = write(fd, in.buf + in.pos + done, chunk - done);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) FAIL_SYS("writing \"%.200s\"", name);
      done += (size_t)w;
    }
    in.pos += chunk;
    n -= chunk;
  }
  return 0;
}

static int read_exact(void *dst, size_t n, const char *what) {
  unsigned char *d = dst;
  while (n > 0) {
    int more = fill();
    TRY(more);
    if (more == 0) FAIL("truncated archive: %s ends early", what);
    size_t chunk = in.len - in.pos < n ? in.len - in.pos : n;
    memcpy(d, in.buf + in.pos, chunk);
    in.pos += chunk, d += chunk, n -= chunk;
  }
  return 0;
}

static uint64_t padding(uint64_t size) { return (BLOCK - size % BLOCK) % BLOCK; }

/* ---- tar headers ---------------------------------------------------------------- */

/* Octal (optionally space/NUL padded) or GNU base-256. Negative values are refused. */
static int parse_number(const char *field, size_t len, uint64_t *out, const char *what) {
  const unsigned char *f = (const unsigned char *)field;
  uint64_t v = 0;
  if (f[0] & 0x80) {
    if (f[0] == 0xff) FAIL("invalid tar header: negative %s", what);
    for (size_t i = 0; i < len; i++) {
      if (v >> 55) FAIL("invalid tar header: %s overflows", what);
      v = (v << 8) | (i == 0 ? (f[0] & 0x7f) : f[i]);
    }
    *out = v;
    return 0;
  }
  size_t i = 0;
  while (i < len && f[i] == ' ') i++;
  for (; i < len && f[i] >= '0' && f[i] <= '7'; i++) {
    if (v >> 60) FAIL("invalid tar header: %s overflows", what);
    v = v * 8 + (f[i] - '0');
  }
  for (; i < len; i++)
    if (f[i] != ' ' && f[i] != '\0') FAIL("invalid tar header: bad %s field", what);
  *out = v;
  return 0;
}

static int parse_decimal(const char *s, size_t len, uint64_t *out, const char *what) {
  uint64_t v = 0;
  if (len == 0) FAIL("invalid PAX header: empty %s", what);
  for (size_t i = 0; i < len; i++) {
    if (s[i] < '0' || s[i] > '9') FAIL("invalid PAX header: bad %s \"%.40s\"", what, s);
    if (v > (UINT64_MAX - 9) / 10) FAIL("invalid PAX header: %s overflows", what);
    v = v * 10 + (uint64_t)(s[i] - '0');
  }
  *out = v;
  return 0;
}

struct xattr {
  char *name, *value;
  size_t len;
};

/* One logical entry; PAX and GNU L/K headers fill the "next" fields first. */
struct entry {
  char type;
  char *path, *link; /* owned */
  uint64_t size, uid, gid, mode;
  struct timespec mtime;
  bool has_size, has_uid, has_gid, has_mtime;
  struct xattr xattrs[MAX_XATTRS];
  size_t n_xattrs;
};

static void entry_reset(struct entry *e) {
  free(e->path);
  free(e->link);
  for (size_t i = 0; i < e->n_xattrs; i++) free(e->xattrs[i].name), free(e->xattrs[i].value);
  memset(e, 0, sizeof(*e));
}

static char *dup_value(const char *s, size_t len) {
  char *c = malloc(len + 1);
  if (c != NULL) memcpy(c, s, len), c[len] = '\0';
  return c;
}

static int parse_pax(struct entry *e, char *data, size_t size) {
  for (size_t off = 0; off < size;) {
    char *rec = data + off, *space = memchr(rec, ' ', size - off);
    uint64_t len;
    if (space == NULL) FAIL("invalid PAX header: record without length");
    TRY(parse_decimal(rec, (size_t)(space - rec), &len, "record length"));
    if (len > size - off || len < (uint64_t)(space - rec) + 3 || rec[len - 1] != '\n')
      FAIL("invalid PAX header: bad record length");
    char *key = space + 1, *end = rec + len - 1, *eq = memchr(key, '=', (size_t)(end - key));
    if (eq == NULL) FAIL("invalid PAX header: record without '='");
    *eq = '\0';
    char *val = eq + 1;
    size_t vlen = (size_t)(end - val);
    bool has_nul = memchr(val, '\0', vlen) != NULL;
    off += len;
    if (strcmp(key, "path") == 0 || strcmp(key, "linkpath") == 0) {
      if (has_nul) FAIL("invalid PAX header: %s contains a NUL byte", key);
      char **slot = key[0] == 'p' ? &e->path : &e->link;
      free(*slot);
      if ((*slot = dup_value(val, vlen)) == NULL) FAIL_SYS("allocating");
    } else if (strcmp(key, "size") == 0) {
      TRY(parse_decimal(val, vlen, &e->size, key));
      e->has_size = true;
    } else if (strcmp(key, "uid") == 0) {
      TRY(parse_decimal(val, vlen, &e->uid, key));
      e->has_uid = true;
    } else if (strcmp(key, "gid") == 0) {
      TRY(parse_decimal(val, vlen, &e->gid, key));
      e->has_gid = true;
    } else if (strcmp(key, "mtime") == 0) {
      char *dot = memchr(val, '.', vlen);
      size_t ilen = dot != NULL ? (size_t)(dot - val) : vlen;
      uint64_t sec, nsec = 0;
      TRY(parse_decimal(val, ilen, &sec, key));
      if (sec > INT64_MAX) FAIL("invalid PAX header: mtime overflows");
      for (size_t i = 1, digits = 0; dot != NULL && i < vlen - ilen; i++)
        if (val[ilen + i] < '0' || val[ilen + i] > '9') FAIL("invalid PAX header: bad mtime");
        else if (digits++ < 9) nsec = nsec * 10 + (uint64_t)(val[ilen + i] - '0');
      for (size_t d = dot != NULL ? vlen - ilen - 1 : 0; d < 9; d++) nsec *= 10;
      e->mtime = (struct timespec){.tv_sec = (time_t)sec, .tv_nsec = (long)nsec};
      e->has_mtime = true;
    } else if (strncmp(key, "SCHILY.xattr.", 13) == 0 && key[13] != '\0') {
      if (e->n_xattrs == MAX_XATTRS) FAIL("invalid PAX header: more than %d xattrs", MAX_XATTRS);
      struct xattr *x = &e->xattrs[e->n_xattrs++];
      x->name = strdup(key + 13);
      x->value = dup_value(val, vlen);
      x->len = vlen;
      if (x->name == NULL || x->value == NULL) FAIL_SYS("allocating");
    } else if (strncmp(key, "GNU.sparse.", 11) == 0) {
      FAIL("unsupported tar feature: sparse files");
    }
  }
  return 0;
}

/* ---- in-root resolution --------------------------------------------------------- */

static int root_fd = -1;

/* Opens path (relative, already cleaned) inside the layer root. */
static int open_in_root(const char *path, uint64_t flags, uint64_t extra_resolve) {
  struct open_how how = {.flags = flags | O_CLOEXEC,
                         .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV | extra_resolve};
  for (int attempt = 0;; attempt++) {
    long fd = syscall(SYS_openat2, root_fd, path[0] != '\0' ? path : ".", &how, sizeof(how));
    if (fd >= 0 || errno != EAGAIN || attempt == 16) return (int)fd;
  }
}

/*
 * Splits name into cleaned components, in place: "", "." dropped; ".." pops but never
 * above the root. Returns the count.
 */
static int clean_path(char *name, char **parts, size_t max, size_t *n_out) {
  size_t n = 0;
  for (char *save = NULL, *c = strtok_r(name, "/", &save); c != NULL; c = strtok_r(NULL, "/", &save)) {
    if (strcmp(c, ".") == 0) continue;
    if (strcmp(c, "..") == 0) {
      if (n > 0) n--;
      continue;
    }
    if (n == max) FAIL_KIND("limit", "path is deeper than the limit of %zu components", max);
    parts[n++] = c;
  }
  *n_out = n;
  return 0;
}

static char *join(char **parts, size_t n) {
  size_t len = 1;
  for (size_t i = 0; i < n; i++) len += strlen(parts[i]) + 1;
  char *s = malloc(len), *p = s;
  if (s == NULL) return NULL;
  *p = '\0';
  for (size_t i = 0; i < n; i++) p += sprintf(p, "%s%s", i > 0 ? "/" : "", parts[i]);
  return s;
}

/* ---- the merged view: this layer over its lower layers ------------------------------ */
/*
 * Parent components are resolved the way rootless containerd resolves them: it applies a
 * layer onto the mounted overlay of the layers below (archive.Apply on the merged root), so
 * fs.RootPath follows a symlink that a LOWER layer has (lib -> usr/lib) inside the root,
 * and "lib/libfoo.so" lands in usr/lib. Only implicit parents are resolved: an entry's own
 * name is never followed, so an explicit "lib/" directory entry still replaces the link.
 * Layers are unpacked apart here, so the overlay's lookup is done by hand over fds:
 *  - a name is looked up top layer first; the first layer that has it decides what it is
 *    (a whiteout hides it, a symlink is followed, a file ends the path); a directory merges
 *    with the directories of the same name below it, down to the first opaque one, the
 *    first non-directory, or the first layer whose parent does not exist;
 *  - symlink targets are resolved by this code, in the root of the merged view (an
 *    absolute target starts again at its root, ".." stops there), never by the kernel:
 *    every lookup is one name relative to a directory fd, with O_NOFOLLOW, on the layer's
 *    own filesystem;
 *  - directories missing in this layer are created in it, taking owner and mode from the
 *    merged directory below (what an overlay copy-up does); one created where this layer
 *    has a whiteout is marked opaque, since the whiteout was hiding the lower content.
 * The lower layers are named with --lower (top first). With --lowers-pending instead, they
 * are not complete yet: an entry that needs them ends the unpack with kind "needs_lowers",
 * and the caller unpacks again once they are (never blocking a download on them). A layer
 * whose every parent is in the layer itself never needs them.
 */

struct layer_dir {
  int fd;
  bool upper; /* the layer being unpacked */
};

/* One merged directory: the layers where it exists as a directory, top first. */
struct stack {
  struct layer_dir *d;
  size_t n, cap;
};

/* A path as components, each owned (malloc'd) by the array. */
struct path {
  char **c;
  size_t n, cap;
};

static bool lowers_pending;
static int *lower_fds;
static size_t n_lowers;
static dev_t root_dev;

#define MAX_SYMLINKS 40

static void stack_clear(struct stack *s) {
  for (size_t i = 0; i < s->n; i++) close(s->d[i].fd);
  s->n = 0;
}

static void stack_free(struct stack *s) {
  stack_clear(s);
  free(s->d);
  s->d = NULL, s->cap = 0;
}

static int stack_push(struct stack *s, int fd, bool upper) {
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 8;
    struct layer_dir *d = realloc(s->d, cap * sizeof(*d));
    if (d == NULL) {
      close(fd);
      FAIL_SYS("allocating");
    }
    s->d = d, s->cap = cap;
  }
  s->d[s->n++] = (struct layer_dir){fd, upper};
  return 0;
}

static void path_free(struct path *p) {
  for (size_t i = 0; i < p->n; i++) free(p->c[i]);
  free(p->c);
  memset(p, 0, sizeof(*p));
}

static int path_push(struct path *p, const char *c) {
  if (p->n == p->cap) {
    size_t cap = p->cap ? p->cap * 2 : 16;
    char **grown = realloc(p->c, cap * sizeof(*grown));
    if (grown == NULL) FAIL_SYS("allocating");
    p->c = grown, p->cap = cap;
  }
  if ((p->c[p->n] = strdup(c)) == NULL) FAIL_SYS("allocating");
  p->n++;
  return 0;
}

static void path_pop(struct path *p) {
  if (p->n > 0) free(p->c[--p->n]);
}

static size_t path_len(char *const *c, size_t n) {
  size_t len = 0;
  for (size_t i = 0; i < n; i++) len += strlen(c[i]) + (i > 0);
  return len;
}

/* Opens one lower layer directory (--lower), in order: top first. */
static int add_lower(const char *path) {
  int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    /* Not the layer's fault: its own kind, never "invalid archive". */
    set_error("lowers", errno, "cannot open the lower layer %.200s", path);
    return -1;
  }
  int *grown = realloc(lower_fds, (n_lowers + 1) * sizeof(*grown));
  if (grown == NULL) {
    close(fd);
    FAIL_SYS("allocating");
  }
  lower_fds = grown;
  lower_fds[n_lowers++] = fd;
  return 0;
}

/* The merged root: this layer, then every lower layer. */
static int stack_root(struct stack *s) {
  stack_clear(s);
  int fd = openat(root_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) FAIL_SYS("cannot open the layer root");
  TRY(stack_push(s, fd, true));
  for (size_t i = 0; i < n_lowers; i++) {
    if ((fd = openat(lower_fds[i], ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
      FAIL_SYS("cannot open a lower layer");
    TRY(stack_push(s, fd, false));
  }
  return 0;
}

static bool is_whiteout(const struct stat *st) { return S_ISCHR(st->st_mode) && st->st_rdev == makedev(0, 0); }

static bool is_opaque(int dir_fd) {
  char v[2];
  return (fgetxattr(dir_fd, "user.overlay.opaque", v, sizeof(v)) == 1 && v[0] == 'y') ||
         (fgetxattr(dir_fd, "trusted.overlay.opaque", v, sizeof(v)) == 1 && v[0] == 'y');
}

enum lookup { L_ABSENT, L_DIR, L_SYMLINK, L_OTHER };

/*
 * Looks `name` up in the merged directory `s`. L_DIR fills `next` with its layers;
 * L_SYMLINK sets *target (malloc'd). *upper_whiteout tells that this layer hides the name.
 */
static int merged_lookup(struct stack *s, const char *name, struct stack *next, char **target,
                         bool *upper_whiteout) {
  stack_clear(next);
  for (size_t i = 0; i < s->n; i++) {
    struct stat st;
    if (fstatat(s->d[i].fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
      if (errno == ENOENT) continue;
      FAIL_SYS("cannot look up \"%.200s\"", name);
    }
    if (next->n == 0) {
      if (is_whiteout(&st)) {
        if (upper_whiteout != NULL) *upper_whiteout = s->d[i].upper;
        return L_ABSENT;
      }
      if (S_ISLNK(st.st_mode)) {
        char *buf = malloc(PATH_MAX);
        if (buf == NULL) FAIL_SYS("allocating");
        ssize_t len = readlinkat(s->d[i].fd, name, buf, PATH_MAX);
        if (len < 0 || len >= PATH_MAX) {
          free(buf);
          FAIL_SYS("cannot read symlink \"%.200s\"", name);
        }
        buf[len] = '\0';
        *target = buf;
        return L_SYMLINK;
      }
      if (!S_ISDIR(st.st_mode)) return L_OTHER;
    } else if (!S_ISDIR(st.st_mode)) {
      break; /* a non-directory below a directory is hidden by it and ends the merge */
    }
    if (st.st_dev != root_dev && s->d[i].upper) FAIL("\"%.200s\" is a mount point", name);
    int fd = openat(s->d[i].fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) FAIL_SYS("cannot open directory \"%.200s\"", name);
    TRY(stack_push(next, fd, s->d[i].upper));
    if (is_opaque(fd)) break;
  }
  return next->n > 0 ? L_DIR : L_ABSENT;
}

/* The merged directory at `p` (which must resolve without symlinks); *absent when it is not there. */
static int stack_walk(struct stack *s, const struct path *p, bool *absent) {
  struct stack next = {0};
  int rc = stack_root(s);
  *absent = false;
  for (size_t i = 0; rc == 0 && i < p->n; i++) {
    char *target = NULL;
    int kind = merged_lookup(s, p->c[i], &next, &target, NULL);
    free(target);
    if (kind < 0) rc = -1;
    else if (kind == L_DIR) {
      struct stack t = *s;
      *s = next, next = t;
    } else {
      *absent = true;
      break;
    }
  }
  stack_free(&next);
  if (rc < 0 || *absent) stack_clear(s);
  return rc;
}

/*
 * Resolves the parent components parts[0..n) of entry `name` in the merged view into `out`
 * (symlink-free, in-root). Components the merged view lacks are kept as names: they are
 * created in this layer by open_dir_in_layer.
 */
static int resolve_parent(char **parts, size_t n, const char *name, struct path *out) {
  struct path pending = {0}; /* components still to walk, last one first */
  struct stack cur = {0}, next = {0};
  int links = 0, rc = -1;
  bool absent = false;
  for (size_t i = n; i > 0; i--)
    if (path_push(&pending, parts[i - 1]) < 0) goto out;
  if (stack_root(&cur) < 0) goto out;
  while (pending.n > 0) {
    _cleanup_free_ char *c = pending.c[--pending.n];
    if (strcmp(c, ".") == 0) continue;
    if (strcmp(c, "..") == 0) {
      path_pop(out);
      if (stack_walk(&cur, out, &absent) < 0) goto out;
      continue;
    }
    if (out->n >= opt.max_depth) {
      set_error("limit", 0, "path of \"%.200s\" is deeper than the limit of %" PRIu64 " components", name,
                opt.max_depth);
      goto out;
    }
    if (absent) {
      if (path_push(out, c) < 0) goto out;
      continue;
    }
    _cleanup_free_ char *target = NULL;
    bool upper_whiteout = false;
    int kind = merged_lookup(&cur, c, &next, &target, &upper_whiteout);
    if (kind < 0) goto out;
    if (kind == L_ABSENT && lowers_pending && !upper_whiteout) {
      /* Not in this layer (nor hidden by it): the layers below decide, and they are not there yet. */
      set_error("needs_lowers", 0, "\"%.200s\" needs the layers below this one", name);
      goto out;
    }
    if (kind == L_OTHER) {
      set_error("invalid_archive", 0, "cannot unpack \"%.200s\": its parent \"%.200s\" is not a directory", name, c);
      goto out;
    }
    if (kind == L_SYMLINK) {
      if (++links > MAX_SYMLINKS) {
        set_error("invalid_archive", 0, "cannot unpack \"%.200s\": too many levels of symbolic links", name);
        goto out;
      }
      /* Its components go first; an absolute target starts again at the merged root. */
      struct path parsed = {0};
      for (char *save = NULL, *t = strtok_r(target, "/", &save); t != NULL; t = strtok_r(NULL, "/", &save))
        if (path_push(&parsed, t) < 0) {
          path_free(&parsed);
          goto out;
        }
      for (size_t i = parsed.n; i > 0; i--)
        if (path_push(&pending, parsed.c[i - 1]) < 0) {
          path_free(&parsed);
          goto out;
        }
      path_free(&parsed);
      if (target[0] == '/') {
        while (out->n > 0) path_pop(out);
        if (stack_root(&cur) < 0) goto out;
      }
      continue;
    }
    if (path_push(out, c) < 0) goto out;
    if (kind == L_ABSENT) {
      absent = true;
      stack_clear(&cur);
    } else {
      struct stack t = cur;
      cur = next, next = t;
    }
  }
  rc = 0;
out:
  path_free(&pending);
  stack_free(&cur);
  stack_free(&next);
  return rc;
}

/* Steps the lower view `below` one name down; it ends empty where the name is no directory. */
static int below_step(struct stack *below, struct stack *next, const char *c, struct stat *dir_stat) {
  if (below->n == 0) return 0;
  char *target = NULL;
  int kind = merged_lookup(below, c, next, &target, NULL);
  free(target);
  if (kind < 0) return -1;
  struct stack t = *below;
  *below = *next, *next = t;
  if (kind != L_DIR) stack_clear(below);
  if (kind == L_DIR && dir_stat != NULL && fstat(below->d[0].fd, dir_stat) < 0) FAIL_SYS("cannot stat \"%.200s\"", c);
  return kind == L_DIR;
}

/*
 * Opens the directory `p` of this layer, creating what is missing (see the section comment
 * for owner, mode and opacity). With create false, a missing directory fails with ENOENT.
 */
static int open_dir_in_layer(const struct path *p, bool create, const char *name) {
  int fd = openat(root_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) FAIL_SYS("cannot open the layer root");
  struct stack below = {0}, next = {0}; /* the lower layers' merged directory at the same path */
  bool below_walked = false;
  for (size_t i = 0; i < p->n; i++) {
    const char *c = p->c[i];
    struct stat st;
    bool missing = false, was_whiteout = false;
    if (fstatat(fd, c, &st, AT_SYMLINK_NOFOLLOW) < 0) {
      if (errno != ENOENT) {
        set_error("system", errno, "cannot look up \"%.200s\"", c);
        goto fail;
      }
      missing = true;
    } else if (create && is_whiteout(&st)) {
      was_whiteout = true;
    } else if (!S_ISDIR(st.st_mode)) {
      set_error("invalid_archive", 0, "cannot unpack \"%.200s\": its parent \"%.200s\" is not a directory", name, c);
      goto fail;
    } else if (st.st_dev != root_dev) {
      set_error("invalid_archive", 0, "cannot unpack \"%.200s\": \"%.200s\" is a mount point", name, c);
      goto fail;
    }
    if (missing && !create) {
      close(fd);
      stack_free(&below), stack_free(&next);
      errno = ENOENT;
      return -1;
    }
    if (!below_walked && missing && n_lowers > 0) {
      /* The lower layers' view of p[0..i): the merged walk without this layer's own part. */
      struct path prefix = {.c = p->c, .n = i};
      bool gone = false;
      if (stack_walk(&below, &prefix, &gone) < 0) goto fail;
      if (below.n > 0 && below.d[0].upper) {
        close(below.d[0].fd);
        memmove(below.d, below.d + 1, --below.n * sizeof(*below.d));
      }
      below_walked = true;
    }
    struct stat from;
    int lower_dir = below_walked ? below_step(&below, &next, c, &from) : 0;
    if (lower_dir < 0) goto fail;
    if (was_whiteout && unlinkat(fd, c, 0) < 0) {
      set_error("system", errno, "cannot replace the whiteout \"%.200s\"", c);
      goto fail;
    }
    if ((missing || was_whiteout) && mkdirat(fd, c, 0755) < 0) {
      set_error("system", errno, "cannot create the parent directory of \"%.200s\"", name);
      goto fail;
    }
    int sub = openat(fd, c, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (sub < 0) {
      set_error("system", errno, "cannot open the parent directory of \"%.200s\"", name);
      goto fail;
    }
    close(fd);
    fd = sub;
    /* A copy-up takes the owner and mode of the directory below (never its opacity). */
    if (missing && lower_dir == 1 &&
        (fchown(fd, from.st_uid, from.st_gid) < 0 || fchmod(fd, from.st_mode & 07777) < 0)) {
      set_error("system", errno, "cannot copy the owner and mode of \"%.200s\" from the layer below", c);
      goto fail;
    }
    /* The whiteout hid what the layers below have here; the new directory must too. */
    if (was_whiteout) {
      if (fsetxattr(fd, "user.overlay.opaque", "y", 1, 0) < 0) {
        set_error("system", errno, "cannot mark \"%.200s\" opaque (user xattrs needed)", c);
        goto fail;
      }
      (void)fsetxattr(fd, "trusted.overlay.opaque", "y", 1, 0);
    }
  }
  stack_free(&below), stack_free(&next);
  return fd;
fail:
  close(fd);
  stack_free(&below), stack_free(&next);
  return -1;
}

/*
 * The parent directory of an entry, in this layer: resolved through the merged view (see
 * above) and created as needed. `resolved` receives the path it was found at.
 * Fast path: when every component is a real directory of this layer, the merged view is
 * exactly this layer's directory (the top layer decides), one openat2 call.
 */
static int open_parent(char **parts, size_t n, const char *name, struct path *resolved) {
  _cleanup_free_ char *path = join(parts, n);
  if (path == NULL) FAIL_SYS("allocating");
  int fd = open_in_root(path, O_RDONLY | O_DIRECTORY, RESOLVE_NO_SYMLINKS);
  if (fd >= 0) {
    for (size_t i = 0; i < n; i++)
      if (path_push(resolved, parts[i]) < 0) {
        close(fd);
        return -1;
      }
    return fd;
  }
  if (errno != ENOENT && errno != ELOOP && errno != ENOTDIR && errno != EXDEV)
    FAIL_SYS("cannot open the parent directory of \"%.200s\"", name);
  TRY(resolve_parent(parts, n, name, resolved));
  if (path_len(resolved->c, resolved->n) > opt.max_path)
    FAIL_KIND("path_length", "\"%.100s\" resolves to a path longer than the limit of %" PRIu64 " bytes", name,
              opt.max_path);
  return open_dir_in_layer(resolved, true, name);
}

static int remove_tree(int dir_fd, const char *name, int depth) {
  if (depth > 512) FAIL("cannot replace \"%.200s\": directory tree too deep", name);
  int fd = openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) FAIL_SYS("cannot open \"%.200s\" to replace it", name);
  DIR *d = fdopendir(fd);
  if (d == NULL) {
    close(fd);
    FAIL_SYS("cannot list \"%.200s\"", name);
  }
  int rc = 0;
  for (struct dirent *de; rc == 0 && (de = readdir(d)) != NULL;) {
    if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
    struct stat st;
    if (fstatat(fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) rc = -1, set_error("system", errno, "stat");
    else if (S_ISDIR(st.st_mode)) rc = remove_tree(fd, de->d_name, depth + 1);
    else if (unlinkat(fd, de->d_name, 0) < 0) rc = -1, set_error("system", errno, "unlink \"%.200s\"", de->d_name);
  }
  closedir(d);
  TRY(rc);
  if (unlinkat(dir_fd, name, AT_REMOVEDIR) < 0) FAIL_SYS("cannot remove \"%.200s\"", name);
  return 0;
}

/* Makes room for a new entry: an existing non-directory is unlinked, an existing
 * directory is kept for a directory entry and removed otherwise. Returns 1 if kept. */
static int make_room(int parent, const char *base, bool want_dir) {
  struct stat st;
  if (fstatat(parent, base, &st, AT_SYMLINK_NOFOLLOW) < 0) {
    if (errno == ENOENT) return 0;
    FAIL_SYS("cannot stat \"%.200s\"", base);
  }
  if (S_ISDIR(st.st_mode)) {
    if (want_dir) return 1;
    TRY(remove_tree(parent, base, 0));
  } else if (unlinkat(parent, base, 0) < 0) {
    FAIL_SYS("cannot replace \"%.200s\"", base);
  }
  return 0;
}

/* ---- entries --------------------------------------------------------------------- */

struct dir_time {
  char *path;
  struct timespec mtime;
};
static struct dir_time *dir_times;
static size_t n_dir_times, cap_dir_times;

static int map_ids(struct entry *e, const char *name) {
  if (e->uid > opt.uid_max || e->gid > opt.gid_max) {
    if (opt.squash < 0)
      FAIL_KIND("id_range",
                "\"%.200s\" is owned by %" PRIu64 ":%" PRIu64 ", outside the mapped range 0-%" PRIu64
                ":0-%" PRIu64 " (map more subordinate IDs, or configure ID squashing)",
                name, e->uid, e->gid, opt.uid_max, opt.gid_max);
    if (e->uid > opt.uid_max) e->uid = (uint64_t)opt.squash;
    if (e->gid > opt.gid_max) e->gid = (uint64_t)opt.squash;
  }
  return 0;
}

static bool reserved_xattr(const char *name) {
  /* These would change how the overlay reads the layer (whiteouts, redirects, opacity). */
  return strncmp(name, "trusted.overlay.", 16) == 0 || strncmp(name, "user.overlay.", 13) == 0 ||
         strncmp(name, "user.fuseoverlayfs.", 19) == 0;
}

/* Owner, mode, xattrs and (except directories, done at the end) mtime, all on our fd. */
static int apply_metadata(int fd, struct entry *e, const char *name, bool is_dir) {
  if (fchown(fd, (uid_t)e->uid, (gid_t)e->gid) < 0)
    FAIL_SYS("cannot chown \"%.200s\" to %" PRIu64 ":%" PRIu64, name, e->uid, e->gid);
  if (fchmod(fd, (mode_t)(e->mode & 07777)) < 0) FAIL_SYS("cannot chmod \"%.200s\"", name);
  for (size_t i = 0; i < e->n_xattrs; i++) {
    struct xattr *x = &e->xattrs[i];
    if (reserved_xattr(x->name)) {
      warn("dropped reserved xattr %.100s on \"%.200s\"", x->name, name);
    } else if (fsetxattr(fd, x->name, x->value, x->len, 0) < 0) {
      if (errno != EPERM && errno != ENOTSUP && errno != EACCES)
        FAIL_SYS("cannot set xattr %.100s on \"%.200s\"", x->name, name);
      warn("could not set xattr %.100s on \"%.200s\": %s", x->name, name, strerror(errno));
    }
  }
  struct timespec ts[2] = {e->mtime, e->mtime};
  if (!is_dir && futimens(fd, ts) < 0) FAIL_SYS("cannot set times of \"%.200s\"", name);
  return 0;
}

static int whiteout(int parent, const char *base, const char *name) {
  const char *target = base + 4;
  if (strcmp(base, ".wh..wh..opq") == 0) {
    _cleanup_fd_ int dir = openat(parent, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0) FAIL_SYS("cannot open the directory of \"%.200s\"", name);
    /* Kernel overlay (userxattr) and fuse-overlayfs >= 1.10 both read user.overlay.opaque;
     * trusted.* only works with CAP_SYS_ADMIN in the initial namespace, so best-effort. */
    if (fsetxattr(dir, "user.overlay.opaque", "y", 1, 0) < 0)
      FAIL_SYS("cannot mark the directory of \"%.200s\" opaque (user xattrs needed)", name);
    (void)fsetxattr(dir, "trusted.overlay.opaque", "y", 1, 0);
    return 0;
  }
  if (*target == '\0' || strcmp(target, ".") == 0 || strcmp(target, "..") == 0 ||
      strncmp(target, ".wh.", 4) == 0)
    FAIL("invalid whiteout \"%.200s\": its target must be a plain child of its directory", name);
  TRY(make_room(parent, target, false));
  if (mknodat(parent, target, S_IFCHR, makedev(0, 0)) < 0)
    FAIL_SYS("cannot create the whiteout for \"%.200s\"", name);
  return 0;
}

/*
 * The target of a hardlink entry: its parent resolved like an entry's (through the merged
 * view, containerd's hardlinkRootPath), the target itself never followed. It must be in
 * this layer: a link cannot reach into the layers below.
 */
static int open_link_target(char **parts, size_t n, const char *name, const char *link) {
  _cleanup_free_ char *target_path = join(parts, n);
  if (target_path == NULL) FAIL_SYS("allocating");
  int fd = open_in_root(target_path, O_PATH | O_NOFOLLOW, RESOLVE_NO_SYMLINKS);
  if (fd >= 0) return fd;
  if (errno != ENOENT && errno != ELOOP && errno != ENOTDIR)
    FAIL_SYS("cannot open the target of hardlink \"%.200s\"", name);
  struct path resolved = {0};
  int parent = resolve_parent(parts, n - 1, name, &resolved);
  if (parent == 0) parent = open_dir_in_layer(&resolved, false, name);
  path_free(&resolved);
  if (parent >= 0) {
    fd = openat(parent, parts[n - 1], O_PATH | O_NOFOLLOW | O_CLOEXEC);
    close(parent);
    if (fd >= 0) return fd;
  }
  if (errno == ENOENT || errno == ENOTDIR) {
    g_error[0] = '\0'; /* the lookup's own error gives way to the plain answer */
    FAIL("hardlink \"%.200s\" points at \"%.200s\", which is not in this layer", name, link);
  }
  if (g_error[0] == '\0') FAIL_SYS("cannot open the target of hardlink \"%.200s\"", name);
  return -1;
}

static int hardlink(int parent, const char *base, struct entry *e, const char *name) {
  char *parts[4096];
  size_t n;
  _cleanup_free_ char *copy = strdup(e->link != NULL ? e->link : "");
  if (copy == NULL) FAIL_SYS("allocating");
  TRY(clean_path(copy, parts, opt.max_depth, &n));
  _cleanup_fd_ int target = -1;
  if (n > 0) TRY(target = open_link_target(parts, n, name, e->link));
  struct stat tst, cur;
  if (n == 0 || fstat(target, &tst) < 0 || S_ISDIR(tst.st_mode))
    FAIL("hardlink \"%.200s\" points at a directory", name);
  if (fstatat(parent, base, &cur, AT_SYMLINK_NOFOLLOW) == 0 && cur.st_dev == tst.st_dev &&
      cur.st_ino == tst.st_ino)
    return 0;
  TRY(make_room(parent, base, false));
  if (linkat(target, "", parent, base, AT_EMPTY_PATH) == 0) return 0;
  char proc[64];
  snprintf(proc, sizeof(proc), "/proc/self/fd/%d", target);
  if (linkat(AT_FDCWD, proc, parent, base, AT_SYMLINK_FOLLOW) < 0)
    FAIL_SYS("cannot create hardlink \"%.200s\"", name);
  return 0;
}

static int process_entry(struct entry *e, const char *name) {
  char *parts[4096];
  size_t n;
  _cleanup_free_ char *copy = strdup(name);
  if (copy == NULL) FAIL_SYS("allocating");
  TRY(clean_path(copy, parts, opt.max_depth, &n));
  if (path_len(parts, n) > opt.max_path)
    FAIL_KIND("path_length", "\"%.100s...\" is %zu bytes long, over the limit of %" PRIu64 " bytes", name,
              path_len(parts, n), opt.max_path);
  TRY(map_ids(e, name));
  bool is_dir = e->type == '5';
  struct path where __attribute__((cleanup(path_free))) = {0}; /* the entry's resolved path */

  if (n == 0) {
    if (!is_dir) {
      warn("ignored \"%.200s\": a non-directory entry cannot replace the layer root", name);
      return 0;
    }
    _cleanup_fd_ int fd = open_in_root("", O_RDONLY | O_DIRECTORY, 0);
    if (fd < 0) FAIL_SYS("cannot open the layer root");
    TRY(apply_metadata(fd, e, name, true));
  } else {
    for (size_t i = 0; i < n; i++)
      if (strncmp(parts[i], ".wh..wh.", 8) == 0 && strcmp(parts[i], ".wh..wh..opq") != 0) {
        warn("ignored aufs metadata \"%.200s\"", name);
        return 0;
      } else if (i + 1 < n && strncmp(parts[i], ".wh.", 4) == 0) {
        FAIL("invalid whiteout \"%.200s\": a whiteout cannot have children", name);
      }
    const char *base = parts[n - 1];
    _cleanup_fd_ int parent = -1;
    TRY(parent = open_parent(parts, n - 1, name, &where));
    TRY(path_push(&where, base));
    if (path_len(where.c, where.n) > opt.max_path)
      FAIL_KIND("path_length", "\"%.100s\" resolves to a path longer than the limit of %" PRIu64 " bytes", name,
                opt.max_path);
    if (strncmp(base, ".wh.", 4) == 0) return whiteout(parent, base, name);
    if (e->type == '1') return hardlink(parent, base, e, name);
    if (e->type == '3' || e->type == '4') {
      warn("skipped device node \"%.200s\": devices cannot be created without privileges", name);
      return 0;
    }
    /* A directory replacing this layer's own whiteout must keep hiding what lies below. */
    struct stat old;
    bool over_whiteout = is_dir && fstatat(parent, base, &old, AT_SYMLINK_NOFOLLOW) == 0 && is_whiteout(&old);
    int kept;
    TRY(kept = make_room(parent, base, is_dir));
    _cleanup_fd_ int fd = -1;
    switch (e->type) {
      case '0':
        fd = openat(parent, base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0) FAIL_SYS("cannot create \"%.200s\"", name);
        TRY(copy_out(fd, e->size, name));
        e->size = 0;
        break;
      case '5':
        if (!kept && mkdirat(parent, base, 0700) < 0) FAIL_SYS("cannot create directory \"%.200s\"", name);
        fd = openat(parent, base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd >= 0 && over_whiteout) {
          if (fsetxattr(fd, "user.overlay.opaque", "y", 1, 0) < 0)
            FAIL_SYS("cannot mark \"%.200s\" opaque (user xattrs needed)", name);
          (void)fsetxattr(fd, "trusted.overlay.opaque", "y", 1, 0);
        }
        break;
      case '6':
        if (mknodat(parent, base, S_IFIFO | 0600, 0) < 0) FAIL_SYS("cannot create fifo \"%.200s\"", name);
        fd = openat(parent, base, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
        break;
      case '2': {
        if (e->link == NULL || e->link[0] == '\0') FAIL("symlink \"%.200s\" has an empty target", name);
        if (symlinkat(e->link, parent, base) < 0) FAIL_SYS("cannot create symlink \"%.200s\"", name);
        if (fchownat(parent, base, (uid_t)e->uid, (gid_t)e->gid, AT_SYMLINK_NOFOLLOW) < 0)
          FAIL_SYS("cannot chown symlink \"%.200s\"", name);
        struct timespec ts[2] = {e->mtime, e->mtime};
        if (utimensat(parent, base, ts, AT_SYMLINK_NOFOLLOW) < 0)
          FAIL_SYS("cannot set times of symlink \"%.200s\"", name);
        if (e->n_xattrs > 0) warn("skipped xattrs of symlink \"%.200s\"", name);
        return 0;
      }
    }
    if (fd < 0) FAIL_SYS("cannot open \"%.200s\"", name);
    TRY(apply_metadata(fd, e, name, is_dir));
  }
  if (is_dir) {
    if (n_dir_times == cap_dir_times) {
      cap_dir_times = cap_dir_times ? cap_dir_times * 2 : 256;
      dir_times = realloc(dir_times, cap_dir_times * sizeof(*dir_times));
      if (dir_times == NULL) FAIL_SYS("allocating");
    }
    dir_times[n_dir_times] = (struct dir_time){n == 0 ? join(parts, 0) : join(where.c, where.n), e->mtime};
    if (dir_times[n_dir_times++].path == NULL) FAIL_SYS("allocating");
  }
  return 0;
}

/* Directory mtimes last, since creating children changes them. Re-resolved without
 * following any symlink: a directory replaced since then is simply skipped. */
static void apply_dir_times(void) {
  for (size_t i = 0; i < n_dir_times; i++) { /* in order: a repeated directory's last entry wins */
    _cleanup_fd_ int fd = open_in_root(dir_times[i].path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, RESOLVE_NO_SYMLINKS);
    struct timespec ts[2] = {dir_times[i].mtime, dir_times[i].mtime};
    if (fd >= 0) (void)futimens(fd, ts);
  }
}

/* ---- archive loop ---------------------------------------------------------------- */

static bool checksum_ok(const unsigned char *h) {
  uint64_t want;
  if (parse_number((const char *)h + 148, 8, &want, "checksum") < 0) return false;
  uint64_t u = 0;
  int64_t s = 0;
  for (int i = 0; i < BLOCK; i++) {
    unsigned char c = (i >= 148 && i < 156) ? ' ' : h[i];
    u += c, s += (signed char)c;
  }
  return want == u || (int64_t)want == s;
}

static int read_meta(char **out, uint64_t size, const char *what) {
  if (size > META_MAX) FAIL_KIND("limit", "%s of %" PRIu64 " bytes is larger than %u", what, size, META_MAX);
  free(*out);
  if ((*out = malloc(size + 1)) == NULL) FAIL_SYS("allocating");
  TRY(read_exact(*out, size, what));
  (*out)[size] = '\0';
  return copy_out(-1, padding(size), what);
}

static int unpack(uint64_t *entries) {
  struct entry next = {0};
  unsigned char h[BLOCK];
  int meta_headers = 0, rc = -1;
  for (;;) {
    int more = fill();
    if (more == 0) set_error("invalid_archive", 0, "truncated archive: it ends without an end-of-archive marker");
    if (more <= 0 || read_exact(h, BLOCK, "header") < 0) goto out;
    bool zero = true;
    for (int i = 0; i < BLOCK && zero; i++) zero = h[i] == 0;
    if (zero) break;
    if (!checksum_ok(h)) {
      set_error("invalid_archive", 0, "invalid tar header: checksum mismatch (not a tar stream?)");
      goto out;
    }
    uint64_t size, uid, gid, mode, mtime;
    if (parse_number((char *)h + 124, 12, &size, "size") < 0 || parse_number((char *)h + 100, 8, &mode, "mode") < 0 ||
        parse_number((char *)h + 108, 8, &uid, "uid") < 0 || parse_number((char *)h + 116, 8, &gid, "gid") < 0 ||
        parse_number((char *)h + 136, 12, &mtime, "mtime") < 0)
      goto out;
    char type = (char)h[156];
    if (type == 'x' || type == 'g' || type == 'L' || type == 'K') {
      if (++meta_headers > 8) {
        set_error("invalid_archive", 0, "invalid tar: too many consecutive extended headers");
        goto out;
      }
      _cleanup_free_ char *data = NULL;
      char **slot = type == 'L' ? &next.path : type == 'K' ? &next.link : &data;
      if (read_meta(slot, size, "extended header") < 0) goto out;
      if (type == 'x' && parse_pax(&next, data, size) < 0) goto out;
      if (type == 'g') warn("ignored a PAX global header");
      continue;
    }
    meta_headers = 0;
    if (++*entries > opt.max_entries) {
      set_error("limit", 0, "layer has more than the limit of %" PRIu64 " entries", opt.max_entries);
      goto out;
    }
    if (next.path == NULL) {
      bool ustar = memcmp(h + 257, "ustar\0", 6) == 0;
      char name[256 + 1 + 100] = "";
      snprintf(name, sizeof(name), "%.155s%s%.100s", ustar ? (char *)h + 345 : "",
               ustar && h[345] ? "/" : "", (char *)h);
      next.path = strdup(name);
    }
    if (next.link == NULL) next.link = strndup((char *)h + 157, 100);
    if (next.path == NULL || next.link == NULL) {
      set_error("system", ENOMEM, "allocating");
      goto out;
    }
    if (!next.has_size) next.size = size;
    if (!next.has_uid) next.uid = uid;
    if (!next.has_gid) next.gid = gid;
    if (!next.has_mtime) next.mtime = (struct timespec){.tv_sec = (time_t)mtime};
    next.mode = mode;
    size_t plen = strlen(next.path);
    next.type = type == '\0' || type == '7' ? '0' : type == 'D' ? '5' : type;
    if (next.type == '0' && plen > 0 && next.path[plen - 1] == '/') next.type = '5';
    if (strchr("0123456", next.type) == NULL) {
      set_error("invalid_archive", 0, "unsupported tar entry type '%c' for \"%.200s\"", type, next.path);
      goto out;
    }
    uint64_t consumed = in.total - (in.len - in.pos);
    if (next.size > opt.max_bytes - consumed) {
      set_error("limit", 0, "uncompressed layer is larger than the limit of %" PRIu64 " bytes", opt.max_bytes);
      goto out;
    }
    uint64_t skip = padding(next.size);
    if (process_entry(&next, next.path) < 0) goto out;
    if (copy_out(-1, next.size + skip, next.path) < 0) goto out; /* data not consumed above */
    entry_reset(&next);
  }
  /* Drain the rest (second zero block, record padding) so the whole stream is read, and
   * counted against the size limit. */
  for (int more; (more = fill()) != 0; in.pos = in.len)
    if (more < 0) goto out;
  rc = 0;
out:
  entry_reset(&next);
  return rc;
}

int main(int argc, char **argv) {
  static const struct option long_opts[] = {
      {"max-bytes", required_argument, 0, 'b'}, {"max-entries", required_argument, 0, 'e'},
      {"max-depth", required_argument, 0, 'd'}, {"uid-max", required_argument, 0, 'u'},
      {"gid-max", required_argument, 0, 'g'},   {"squash-ids", required_argument, 0, 's'},
      {"whiteout-format", required_argument, 0, 'w'}, {"max-path", required_argument, 0, 'p'},
      {"lower", required_argument, 0, 'l'},           {"lowers-pending", no_argument, 0, 'P'},
      {"compression", required_argument, 0, 'c'},     {0, 0, 0, 0}};
  for (int c; (c = getopt_long(argc, argv, "", long_opts, NULL)) != -1;) {
    char *end = NULL;
    errno = 0;
    if (c == 'l') {
      if (add_lower(optarg) < 0) report_failure_and_exit(2);
      continue;
    }
    if (c == 'P') {
      lowers_pending = true;
      continue;
    }
    if (c == 'c') {
      if (strcmp(optarg, "none") == 0) compression = COMPRESSION_NONE;
      else if (strcmp(optarg, "gzip") == 0) compression = COMPRESSION_GZIP;
      else if (strcmp(optarg, "zstd") == 0) compression = COMPRESSION_ZSTD;
      else {
        set_error("usage", 0, "unsupported --compression %.40s (none, gzip or zstd)", optarg);
        report_failure_and_exit(2);
      }
      continue;
    }
    unsigned long long v = c == 'w' || c == '?' ? 0 : strtoull(optarg, &end, 10);
    if (c == '?' || (c != 'w' && (errno != 0 || end == optarg || *end != '\0' || optarg[0] == '-'))) {
      set_error("usage", 0, "usage: layer-unpack [--max-bytes N] [--max-entries N] [--max-depth N] [--uid-max N] "
                            "[--gid-max N] [--squash-ids ID] [--max-path N] [--lower DIR]... [--lowers-pending] "
                            "[--whiteout-format overlay] [--compression none|gzip|zstd] "
                            "DEST < layer");
      report_failure_and_exit(2);
    }
    if (c == 'w' && strcmp(optarg, "overlay") != 0) {
      set_error("usage", 0, "unsupported --whiteout-format %.40s (only \"overlay\")", optarg);
      report_failure_and_exit(2);
    }
    if (c == 'b') opt.max_bytes = v;
    if (c == 'e') opt.max_entries = v;
    if (c == 'd') opt.max_depth = v > 4096 ? 4096 : v;
    if (c == 'p') opt.max_path = v > PATH_MAX - 1 ? PATH_MAX - 1 : v;
    if (c == 'u') opt.uid_max = v;
    if (c == 'g') opt.gid_max = v;
    if ((c == 's' || c == 'u' || c == 'g') && v >= UINT32_MAX) { /* (uid_t)-1 means "unchanged" */
      set_error("usage", 0, "--uid-max, --gid-max and --squash-ids take IDs below 4294967295");
      report_failure_and_exit(2);
    }
    if (c == 's') opt.squash = (int64_t)v;
  }
  if (optind != argc - 1) {
    set_error("usage", 0, "usage: layer-unpack [options] DEST < layer.tar (exactly one destination)");
    report_failure_and_exit(2);
  }
  root_fd = open(argv[optind], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (root_fd < 0) {
    set_error("usage", errno, "cannot open destination %.200s", argv[optind]);
    report_failure_and_exit(2);
  }
  DIR *d = fdopendir(dup(root_fd));
  for (struct dirent *de; d != NULL && (de = readdir(d)) != NULL;)
    if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) {
      set_error("usage", 0, "destination %.200s is not empty", argv[optind]);
      report_failure_and_exit(2);
    }
  if (d != NULL) closedir(d);
  int probe = open_in_root("", O_PATH | O_DIRECTORY, 0);
  if (probe < 0) {
    set_error("system", errno, "openat2 with RESOLVE_IN_ROOT is unavailable (Linux >= 5.6 needed); refusing to unpack without it");
    report_failure_and_exit(1);
  }
  close(probe);
  struct stat root_st;
  if (fstat(root_fd, &root_st) < 0) {
    set_error("system", errno, "cannot stat destination %.200s", argv[optind]);
    report_failure_and_exit(1);
  }
  root_dev = root_st.st_dev;

  umask(022); /* implicit parent directories are 0755 whatever the caller's umask */
  if (open_decompressor() < 0) report_failure_and_exit(1);
  SHA256_Init(&diff_id);
  uint64_t entries = 0;
  if (unpack(&entries) < 0) report_failure_and_exit(1);
  apply_dir_times();
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256_Final(digest, &diff_id);
  printf("{\"ok\":true,\"entries\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"diffId\":\"sha256:", entries, in.total);
  for (size_t i = 0; i < sizeof(digest); i++) printf("%02x", digest[i]);
  printf("\",\"warnings\":[");
  for (size_t i = 0; i < n_warnings && i < MAX_WARNINGS; i++) {
    if (i > 0) putchar(',');
    json_string(stdout, warnings[i] != NULL ? warnings[i] : "");
  }
  if (n_warnings > MAX_WARNINGS) printf(",\"... and %zu more warnings\"", n_warnings - MAX_WARNINGS);
  puts("]}");
  return fflush(stdout) == 0 ? 0 : 1;
}
