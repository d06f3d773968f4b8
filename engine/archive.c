/*
** archive.c — capil.core.archive: tar archives on libarchive, written and
** read as streams. Generic (no OVF knowledge): an OVA is a ustar tar whose
** members capil.format.ova puts in order.
**
** The writer streams each file once. Member data is read into one of a few
** 1 MiB slots, written to the archive file from there and handed to a helper
** thread that feeds the SHA-256 of the whole archive (and of the member when
** asked), so hashing overlaps the copy. libarchive runs unblocked
** (bytes_per_block 0): its write callback receives our slot pointers as they
** are, and the few bytes it makes itself (headers, padding, the end blocks)
** are hashed inline once the helper has caught up, which keeps the order.
**
** The reader streams an archive once: headers with their format (ustar, pax,
** gnu), member data hashed block by block from libarchive's own buffers, kept
** (a prefix) or written to a file; with sha256=true the bytes of the whole
** archive are hashed on the helper thread as they are read.
**
** libarchive callbacks are pure C: they never call Lua and never raise.
*/
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>
#include <openssl/evp.h>

#include "capil.h"

#define WRITER_MT "capil.archive.Writer"
#define READER_MT "capil.archive.Reader"

#define SLOT_SIZE (1 << 20)
#define NSLOT 4
#define QLEN 16

/* ====================================================================== */
/* The hashing pipeline                                                   */
/* ====================================================================== */

/*
** A helper thread that digests byte ranges in the order they are queued.
** The ranges live in `slots` (NSLOT buffers of SLOT_SIZE): a slot is reused
** only once the thread has digested everything queued from it. `mctx`, when
** set, also gets the ranges queued with `member` (a member's own digest).
*/
typedef struct {
  EVP_MD_CTX *ctx, *mctx;
  unsigned char *slots;
  struct { const unsigned char *p; size_t n; int member; } q[QLEN];
  uint64_t head, tail;              /* ranges queued, ranges digested */
  uint64_t free_at[NSLOT];          /* slot k is free once tail >= free_at[k] */
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int started, stop;
} Hasher;

static void *hasher_main(void *arg) {
  Hasher *h = arg;
  pthread_mutex_lock(&h->mu);
  for (;;) {
    while (h->tail == h->head && !h->stop) pthread_cond_wait(&h->cv, &h->mu);
    if (h->tail == h->head) break;
    const unsigned char *p = h->q[h->tail % QLEN].p;
    size_t n = h->q[h->tail % QLEN].n;
    int member = h->q[h->tail % QLEN].member;
    pthread_mutex_unlock(&h->mu);
    EVP_DigestUpdate(h->ctx, p, n);
    if (member && h->mctx) EVP_DigestUpdate(h->mctx, p, n);
    pthread_mutex_lock(&h->mu);
    h->tail++;
    pthread_cond_broadcast(&h->cv);
  }
  pthread_mutex_unlock(&h->mu);
  return NULL;
}

/* 0 or an errno; with `hash` the helper thread starts (otherwise the slots
** are plain buffers). */
static int hasher_init(Hasher *h, int hash) {
  memset(h, 0, sizeof *h);
  void *mem = NULL;
  int err = posix_memalign(&mem, 4096, (size_t)NSLOT * SLOT_SIZE);
  if (err) return err;
  h->slots = mem;
  if (!hash) return 0;
  h->ctx = EVP_MD_CTX_new();
  if (!h->ctx || EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) != 1) return ENOMEM;
  pthread_mutex_init(&h->mu, NULL);
  pthread_cond_init(&h->cv, NULL);
  /* the helper blocks every signal, so Ctrl-C reaches the main thread and
  ** interrupts a write(2) blocked there (on a pipe, NFS, a full disk) */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  err = pthread_create(&h->thread, NULL, hasher_main, h);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (err) {
    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->cv);
    return err;
  }
  h->started = 1;
  return 0;
}

/* Slot k, once the helper is done with what was queued from it. */
static unsigned char *hasher_slot(Hasher *h, int k) {
  if (h->started) {
    pthread_mutex_lock(&h->mu);
    while (h->tail < h->free_at[k]) pthread_cond_wait(&h->cv, &h->mu);
    pthread_mutex_unlock(&h->mu);
  }
  return h->slots + (size_t)k * SLOT_SIZE;
}

/* Queues p[0..n) (inside slot k) for digesting. */
static void hasher_push(Hasher *h, int k, const void *p, size_t n, int member) {
  if (!h->started || n == 0) return;
  pthread_mutex_lock(&h->mu);
  while (h->head - h->tail == QLEN) pthread_cond_wait(&h->cv, &h->mu);
  h->q[h->head % QLEN].p = p;
  h->q[h->head % QLEN].n = n;
  h->q[h->head % QLEN].member = member;
  h->head++;
  h->free_at[k] = h->head;
  pthread_cond_broadcast(&h->cv);
  pthread_mutex_unlock(&h->mu);
}

/* Waits until everything queued is digested: the contexts are then ours. */
static void hasher_drain(Hasher *h) {
  if (!h->started) return;
  pthread_mutex_lock(&h->mu);
  while (h->tail < h->head) pthread_cond_wait(&h->cv, &h->mu);
  pthread_mutex_unlock(&h->mu);
}

/* Digests bytes that are not in a slot, in order, on this thread. */
static void hasher_inline(Hasher *h, const void *p, size_t n, int member) {
  if (!h->started) return;
  hasher_drain(h);
  EVP_DigestUpdate(h->ctx, p, n);
  if (member && h->mctx) EVP_DigestUpdate(h->mctx, p, n);
}

static void hasher_free(Hasher *h) {
  if (h->started) {
    pthread_mutex_lock(&h->mu);
    h->stop = 1;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
    pthread_join(h->thread, NULL);
    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->cv);
    h->started = 0;
  }
  EVP_MD_CTX_free(h->ctx);
  EVP_MD_CTX_free(h->mctx);
  h->ctx = h->mctx = NULL;
  free(h->slots);
  h->slots = NULL;
}

static void to_hex(const unsigned char *d, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[d[i] >> 4];
    out[2 * i + 1] = digits[d[i] & 15];
  }
  out[2 * n] = '\0';
}

/* Final value of ctx as 64 hex digits in out[65]; 0 on failure. */
static int final_hex(EVP_MD_CTX *ctx, char *out) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (EVP_DigestFinal_ex(ctx, md, &n) != 1) return 0;
  to_hex(md, n, out);
  return 1;
}

/* The code for a libarchive failure: truncation, not a tar, or generic. */
static const char *archive_code(struct archive *a) {
  const char *s = archive_error_string(a);
  if (s && strstr(s, "Truncated")) return "TRUNCATED";
  if (s && strstr(s, "Unrecognized archive format")) return "NOT_TAR";
  return "ARCHIVE";
}

static const char *archive_why(struct archive *a) {
  const char *s = archive_error_string(a);
  return s ? s : "unknown libarchive error";
}

/* ====================================================================== */
/* Writer                                                                 */
/* ====================================================================== */

typedef struct {
  struct archive *a;
  int fd;
  int closed, finished, broken, discard, sync;
  int werr;                  /* errno of a failed write(2) in the callback */
  int in_data;               /* bytes written now are member data */
  const unsigned char *lo, *hi;  /* the slot handed to libarchive now */
  int slot;                  /* its index */
  int next_slot;
  uint64_t size;             /* bytes of archive written */
  Hasher h;
  char digest[65];           /* of the whole archive, once finished */
  char path[4096];
} Writer;

static Writer *check_writer(lua_State *L, int i) {
  Writer *w = luaL_checkudata(L, i, WRITER_MT);
  if (w->closed) luaL_error(L, "attempt to use a closed archive writer");
  return w;
}

/* libarchive's write callback: everything it emits passes here, in order. */
static la_ssize_t on_write(struct archive *a, void *ud, const void *buf, size_t n) {
  Writer *w = ud;
  (void)a;
  if (w->discard) return (la_ssize_t)n;
  const unsigned char *p = buf;
  size_t left = n;
  while (left > 0) {
    if (capil_interrupted()) {
      w->werr = EINTR;
      return -1;
    }
    ssize_t k = write(w->fd, p, left);
    if (k < 0) {
      if (errno == EINTR) continue;
      /* a pipe or socket (non-blocking): wait for room, 100 ms at a time */
      if (errno == EAGAIN) {
        struct pollfd pfd = {w->fd, POLLOUT, 0};
        poll(&pfd, 1, 100);
        continue;
      }
      w->werr = errno;
      return -1;
    }
    p += k;
    left -= (size_t)k;
  }
  w->size += n;
  const unsigned char *b = buf;
  if (w->lo && b >= w->lo && b + n <= w->hi) hasher_push(&w->h, w->slot, b, n, w->in_data);
  else hasher_inline(&w->h, b, n, w->in_data);
  return (la_ssize_t)n;
}

/* Releases everything; an unfinished archive file is removed. */
static void writer_release(Writer *w) {
  if (w->a) {
    w->discard = 1; /* libarchive may still flush its end blocks */
    archive_write_free(w->a);
    w->a = NULL;
  }
  hasher_free(&w->h);
  if (w->fd >= 0) {
    close(w->fd);
    w->fd = -1;
    if (!w->finished) unlink(w->path);
  }
}

/* A failure that leaves the archive unusable: later calls refuse. */
static int writer_fail_archive(lua_State *L, Writer *w, const char *what) {
  w->broken = 1;
  if (w->werr) return capil_fail_errno(L, w->werr, "archive.writer: %s: %s", w->path, what);
  return capil_fail(L, archive_code(w->a), "archive.writer: %s: %s: %s", w->path, what,
                    archive_why(w->a));
}

/* A header refused before anything was written (a name too long for
** ustar): the archive stays usable. Anything else breaks it. */
static int header_failed(lua_State *L, Writer *w, int r, const char *name) {
  if (r == ARCHIVE_FAILED)
    return capil_fail(L, "ARCHIVE", "archive.writer: %s: %s: %s", w->path, name, archive_why(w->a));
  return writer_fail_archive(L, w, name);
}

static int check_usable(lua_State *L, Writer *w, const char *fn) {
  if (!w->broken) return 0;
  return capil_fail(L, "ARCHIVE", "archive.writer: %s: %s: an earlier failure left the "
                    "archive incomplete", w->path, fn);
}

/*
** archive.writer(path [, {format="ustar"|"pax"|"gnutar", sha256=true, sync=false}])
**   -> Writer | nil, msg, code
** Creates (truncates) path. "pax" is pax-restricted: ustar headers, plus
** an extended header only for a member that needs one (8 GiB and more).
*/
static int l_writer(lua_State *L) {
  static const char *const opts[] = {"format", "sha256", "sync", NULL};
  const char *path = luaL_checkstring(L, 1);
  if (!lua_isnoneornil(L, 2)) capil_check_options(L, 2, "archive.writer", opts);
  const char *format = capil_opt_string(L, 2, "archive.writer", "format", "ustar", NULL);
  int hash = capil_opt_boolean(L, 2, "archive.writer", "sha256", 1);
  int sync = capil_opt_boolean(L, 2, "archive.writer", "sync", 0);
  int (*set_format)(struct archive *);
  if (strcmp(format, "ustar") == 0) set_format = archive_write_set_format_ustar;
  else if (strcmp(format, "pax") == 0) set_format = archive_write_set_format_pax_restricted;
  else if (strcmp(format, "gnutar") == 0) set_format = archive_write_set_format_gnutar;
  else return luaL_error(L, "archive.writer: unknown format '%s' (ustar, pax, gnutar)", format);
  if (strlen(path) >= sizeof ((Writer *)0)->path)
    return luaL_argerror(L, 1, "path too long");

  Writer *w = lua_newuserdatauv(L, sizeof *w, 0);
  memset(w, 0, sizeof *w);
  w->fd = -1;
  w->closed = 1; /* until everything is acquired */
  snprintf(w->path, sizeof w->path, "%s", path);
  luaL_setmetatable(L, WRITER_MT);

  int err = hasher_init(&w->h, hash);
  if (err) {
    hasher_free(&w->h);
    return capil_fail_errno(L, err, "archive.writer: %s", path);
  }
  w->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (w->fd < 0) {
    err = errno;
    hasher_free(&w->h);
    return capil_fail_errno(L, err, "archive.writer: %s", path);
  }
  /* an output that can block for ever (a fifo, a socket) is written
  ** non-blocking, so Ctrl-C is noticed while it does not drain */
  struct stat st;
  if (fstat(w->fd, &st) == 0 && (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)))
    fcntl(w->fd, F_SETFL, fcntl(w->fd, F_GETFL) | O_NONBLOCK);
  w->closed = 0;
  w->sync = sync;
  w->a = archive_write_new();
  if (!w->a || set_format(w->a) != ARCHIVE_OK || archive_write_set_bytes_per_block(w->a, 0) != ARCHIVE_OK ||
      archive_write_open(w->a, w, NULL, on_write, NULL) != ARCHIVE_OK) {
    int r = w->a ? capil_fail(L, "ARCHIVE", "archive.writer: %s: %s", path, archive_why(w->a))
                 : capil_fail_errno(L, ENOMEM, "archive.writer: %s", path);
    w->closed = 1;
    writer_release(w);
    return r;
  }
  return 1;
}

/* Header options shared by add_data and add_file: mode and mtime. */
static void header_opts(lua_State *L, int idx, const char *fn, lua_Integer *mode,
                        lua_Integer *mtime) {
  *mode = capil_opt_integer(L, idx, fn, "mode", *mode);
  *mtime = capil_opt_integer(L, idx, fn, "mtime", *mtime);
  if (*mode < 0 || *mode > 07777) luaL_error(L, "%s: mode must be 0..07777", fn);
  if (*mtime < 0) luaL_error(L, "%s: mtime must not be negative", fn);
}

/* Writes a regular-file header; 0 or a libarchive status. */
static int write_header(Writer *w, const char *name, int64_t size, int mode, int64_t mtime) {
  struct archive_entry *e = archive_entry_new();
  if (!e) return ARCHIVE_FATAL;
  archive_entry_set_pathname(e, name);
  archive_entry_set_size(e, size);
  archive_entry_set_filetype(e, AE_IFREG);
  archive_entry_set_perm(e, (mode_t)mode);
  archive_entry_set_mtime(e, (time_t)mtime, 0);
  int r = archive_write_header(w->a, e);
  archive_entry_free(e);
  return r;
}

/* Starts the member digest (drained: the helper is idle). */
static int member_begin(Writer *w, int want) {
  hasher_drain(&w->h);
  if (!want || !w->h.started) return 1;
  w->h.mctx = EVP_MD_CTX_new();
  return w->h.mctx && EVP_DigestInit_ex(w->h.mctx, EVP_sha256(), NULL) == 1;
}

/* Ends the member digest into hex (empty when none was kept). */
static void member_end(Writer *w, char *hex) {
  hex[0] = '\0';
  hasher_drain(&w->h);
  if (w->h.mctx && !final_hex(w->h.mctx, hex)) hex[0] = '\0';
  EVP_MD_CTX_free(w->h.mctx);
  w->h.mctx = NULL;
}

static void push_member(lua_State *L, uint64_t size, const char *hex) {
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, (lua_Integer)size);
  lua_setfield(L, -2, "size");
  if (hex[0]) {
    lua_pushstring(L, hex);
    lua_setfield(L, -2, "sha256");
  }
}

/*
** w:add_data(name, data [, {mode=0644, mtime=now}]) -> {size, sha256} | nil, msg, code
** A member from a string (the descriptor, the manifest).
*/
static int w_add_data(lua_State *L) {
  static const char *const opts[] = {"mode", "mtime", NULL};
  Writer *w = check_writer(L, 1);
  const char *name = luaL_checkstring(L, 2);
  size_t len;
  const char *data = luaL_checklstring(L, 3, &len);
  if (!lua_isnoneornil(L, 4)) capil_check_options(L, 4, "writer:add_data", opts);
  lua_Integer mode = 0644, mtime = (lua_Integer)time(NULL);
  header_opts(L, 4, "writer:add_data", &mode, &mtime);
  if (check_usable(L, w, "add_data")) return 3;

  char hex[65];
  int hr = write_header(w, name, (int64_t)len, (int)mode, mtime);
  if (hr != ARCHIVE_OK) return header_failed(L, w, hr, name);
  if (!member_begin(w, 1)) return writer_fail_archive(L, w, name);
  w->in_data = 1;
  la_ssize_t r = len ? archive_write_data(w->a, data, len) : 0;
  w->in_data = 0;
  member_end(w, hex);
  if (r < 0 || (size_t)r != len || archive_write_finish_entry(w->a) != ARCHIVE_OK)
    return writer_fail_archive(L, w, name);
  push_member(L, len, hex);
  return 1;
}

/* Reads up to n bytes (fewer only at EOF); -1 with errno on failure. */
static ssize_t read_full(int fd, unsigned char *buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t k = read(fd, buf + got, n - got);
    if (k < 0) {
      if (errno == EINTR && !capil_interrupted()) continue;
      return -1;
    }
    if (k == 0) break;
    got += (size_t)k;
  }
  return (ssize_t)got;
}

/* Streams fd (size bytes) as the current member's data. 0, or an errno
** (EINTR when interrupted), or -1 for a libarchive failure, or -2 when the
** file's length changed under us. */
static int stream_file(Writer *w, int fd, uint64_t size, struct capil_progress *prog) {
  uint64_t done = 0;
  for (;;) {
    if (capil_interrupted()) return EINTR;
    int k = w->next_slot;
    w->next_slot = (k + 1) % NSLOT;
    unsigned char *slot = hasher_slot(&w->h, k);
    ssize_t n = read_full(fd, slot, SLOT_SIZE);
    if (n < 0) return errno == EINTR ? EINTR : errno;
    if (n == 0) break;
    if (done + (uint64_t)n > size) return -2;
    w->lo = slot;
    w->hi = slot + n;
    w->slot = k;
    w->in_data = 1;
    la_ssize_t r = archive_write_data(w->a, slot, (size_t)n);
    w->in_data = 0;
    w->lo = w->hi = NULL;
    if (r != n) return -1;
    done += (uint64_t)n;
    capil_progress_update(prog, done);
  }
  return done == size ? 0 : -2;
}

/*
** w:add_file(name, path [, {mode=, mtime=, progress=, sha256=false, expect_sha256=hex}])
**   -> {size, sha256?} | nil, msg, code
** Streams the file in once. The member's own digest costs a second hash of
** its bytes (on the helper thread): it is computed only with sha256=true or
** expect_sha256 (then a mismatch fails with code "CHECKSUM"). Mode and mtime
** default to the file's. Codes: errno codes, "EINTR", "CHANGED" (the file
** changed size while read), "CHECKSUM", "ARCHIVE".
*/
static int w_add_file(lua_State *L) {
  static const char *const opts[] = {"mode", "mtime", "progress", "sha256", "expect_sha256", NULL};
  Writer *w = check_writer(L, 1);
  const char *name = luaL_checkstring(L, 2);
  const char *path = luaL_checkstring(L, 3);
  if (!lua_isnoneornil(L, 4)) capil_check_options(L, 4, "writer:add_file", opts);
  int want = capil_opt_boolean(L, 4, "writer:add_file", "sha256", 0);
  size_t elen = 0;
  const char *expect = capil_opt_string(L, 4, "writer:add_file", "expect_sha256", NULL, &elen);
  if (expect && elen != 64) return luaL_error(L, "writer:add_file: expect_sha256 must be 64 hex digits");
  lua_Integer mode = capil_opt_integer(L, 4, "writer:add_file", "mode", -1);
  lua_Integer mtime = capil_opt_integer(L, 4, "writer:add_file", "mtime", -1);
  if (mode < -1 || mode > 07777) return luaL_error(L, "writer:add_file: mode must be 0..07777");
  if (mtime < -1) return luaL_error(L, "writer:add_file: mtime must not be negative");
  capil_opt_field(L, 4, "progress");
  struct capil_progress *prog = capil_progress_opt(L, -1);
  if (check_usable(L, w, "add_file")) return 3;
  /* O_NONBLOCK: opening a FIFO must not wait for a writer */
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) return capil_fail_errno(L, errno, "writer:add_file: %s", path);
  struct stat st;
  int err = fstat(fd, &st) != 0 ? errno : S_ISDIR(st.st_mode) ? EISDIR
          : !S_ISREG(st.st_mode) ? EINVAL : 0;
  if (!err && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) != 0) err = errno;
  if (err) {
    close(fd);
    return capil_fail_errno(L, err, "writer:add_file: %s", path);
  }
  if (mode < 0) mode = st.st_mode & 07777;
  if (mtime < 0) mtime = (lua_Integer)st.st_mtime;
  posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  capil_progress_total(prog, (uint64_t)st.st_size);

  /* no Lua calls from here until fd is closed */
  char hex[65];
  int hr = write_header(w, name, (int64_t)st.st_size, (int)mode, mtime);
  if (hr != ARCHIVE_OK) {
    close(fd);
    return header_failed(L, w, hr, name);
  }
  err = member_begin(w, want || expect) ? 0 : -1;
  if (!err) err = stream_file(w, fd, (uint64_t)st.st_size, prog);
  member_end(w, hex);
  close(fd);
  if (!err && archive_write_finish_entry(w->a) != ARCHIVE_OK) err = -1;

  if (err == EINTR) {
    w->broken = 1;
    return capil_fail(L, "EINTR", "writer:add_file: %s: interrupted", path);
  }
  if (err == -2) {
    w->broken = 1;
    return capil_fail(L, "CHANGED", "writer:add_file: %s: the file changed size while it was "
                      "read (%lld bytes expected)", path, (long long)st.st_size);
  }
  if (err == -1) return writer_fail_archive(L, w, name);
  if (err > 0) {
    w->broken = 1;
    return capil_fail_errno(L, err, "writer:add_file: %s", path);
  }
  if (expect && (!hex[0] || strncasecmp(hex, expect, 64) != 0)) {
    w->broken = 1;
    return capil_fail(L, "CHECKSUM", "writer:add_file: %s: SHA-256 is %s, expected %.64s",
                      path, hex[0] ? hex : "unknown", expect);
  }
  push_member(L, (uint64_t)st.st_size, want ? hex : "");
  return 1;
}

/* Pushes {size, sha256?} of a finished archive. */
static int push_summary(lua_State *L, Writer *w) {
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, (lua_Integer)w->size);
  lua_setfield(L, -2, "size");
  if (w->digest[0]) {
    lua_pushstring(L, w->digest);
    lua_setfield(L, -2, "sha256");
  }
  return 1;
}

/*
** w:close() -> {size, sha256} | nil, msg, code
** Writes the end of the archive and closes the file. A writer that failed
** earlier is aborted instead (its file removed) and the failure returned.
** Closing again gives the same answer.
*/
static int w_close(lua_State *L) {
  Writer *w = luaL_checkudata(L, 1, WRITER_MT);
  if (w->closed) {
    if (w->finished) return push_summary(L, w);
    return capil_fail(L, "ARCHIVE", "archive.writer: %s: aborted", w->path);
  }
  w->closed = 1;
  if (w->broken) {
    writer_release(w);
    return capil_fail(L, "ARCHIVE", "archive.writer: %s: incomplete after an earlier failure, "
                      "removed", w->path);
  }
  int ok = archive_write_close(w->a) == ARCHIVE_OK;
  int err = ok ? 0 : w->werr;
  if (ok && w->sync && fsync(w->fd) != 0) { ok = 0; err = errno; }
  /* close(2) releases the fd even when it reports an error */
  int cerr = close(w->fd) != 0 ? errno : 0;
  w->fd = -1;
  if (ok && cerr) { ok = 0; err = cerr; }
  if (!ok) {
    int r = err ? capil_fail_errno(L, err, "archive.writer: %s", w->path)
                : capil_fail(L, "ARCHIVE", "archive.writer: %s: %s", w->path, archive_why(w->a));
    unlink(w->path);
    writer_release(w);
    return r;
  }
  w->finished = 1;
  hasher_drain(&w->h);
  if (w->h.started && !final_hex(w->h.ctx, w->digest)) w->digest[0] = '\0';
  writer_release(w);
  return push_summary(L, w);
}

/* w:abort() — also __gc and __close: an unfinished archive is removed.
** Idempotent; after close() it does nothing. */
static int w_abort(lua_State *L) {
  Writer *w = luaL_checkudata(L, 1, WRITER_MT);
  if (w->closed) return 0;
  w->closed = 1;
  writer_release(w);
  return 0;
}

static int w_tostring(lua_State *L) {
  Writer *w = luaL_checkudata(L, 1, WRITER_MT);
  lua_pushfstring(L, "archive writer %s%s", w->path,
                  w->finished ? " (finished)" : w->closed ? " (closed)" : "");
  return 1;
}

/* ====================================================================== */
/* Reader                                                                 */
/* ====================================================================== */

enum { R_START, R_MEMBER, R_CONSUMED, R_END, R_FAILED };

typedef struct {
  struct archive *a;
  int fd;
  int closed, state, index;
  int rerr;                 /* errno of a failed read(2) in the callback */
  int next_slot;
  int64_t size;             /* current member's size */
  uint64_t pos;             /* bytes of the current member's data given out */
  uint64_t total;           /* bytes of archive read */
  Hasher h;
  int hash;
  char path[4096];
  char fail_code[16];
} Reader;

static Reader *check_reader(lua_State *L, int i) {
  Reader *r = luaL_checkudata(L, i, READER_MT);
  if (r->closed) luaL_error(L, "attempt to use a closed archive reader");
  return r;
}

/* libarchive's read callback when the whole archive is hashed: the bytes
** land in a slot, queued for the helper; libarchive holds a block only until
** its next call, and a slot comes back NSLOT calls later. */
static la_ssize_t on_read(struct archive *a, void *ud, const void **buf) {
  Reader *r = ud;
  (void)a;
  if (capil_interrupted()) { r->rerr = EINTR; return -1; }
  int k = r->next_slot;
  r->next_slot = (k + 1) % NSLOT;
  unsigned char *slot = hasher_slot(&r->h, k);
  ssize_t n = read_full(r->fd, slot, SLOT_SIZE);
  if (n < 0) { r->rerr = errno; return -1; }
  hasher_push(&r->h, k, slot, (size_t)n, 0);
  r->total += (uint64_t)n;
  *buf = slot;
  return n;
}

/* Remembers a failure (code here, message as the user value) so later
** calls return it again. */
static int reader_fail(lua_State *L, Reader *r, int ud, const char *fn, const char *what) {
  if (r->rerr == EINTR) {
    snprintf(r->fail_code, sizeof r->fail_code, "EINTR");
    lua_pushfstring(L, "archive.reader: %s: %s: interrupted", r->path, fn);
  } else if (r->rerr) {
    snprintf(r->fail_code, sizeof r->fail_code, "%s", capil_errno_code(r->rerr));
    lua_pushfstring(L, "archive.reader: %s: %s: %s", r->path, fn, strerror(r->rerr));
  } else {
    snprintf(r->fail_code, sizeof r->fail_code, "%s", archive_code(r->a));
    lua_pushfstring(L, "archive.reader: %s: %s%s%s", r->path, what ? what : "",
                    what ? ": " : "", archive_why(r->a));
  }
  r->rerr = 0;
  r->state = R_FAILED;
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, ud, 1);
  return capil_fail(L, r->fail_code, "%s", lua_tostring(L, -1));
}

/* Fails the reader with capil's own reason (not libarchive's), remembered
** as reader_fail does. */
static int reader_refuse(lua_State *L, Reader *r, int ud, const char *code, const char *why) {
  snprintf(r->fail_code, sizeof r->fail_code, "%s", code);
  lua_pushfstring(L, "archive.reader: %s: %s", r->path, why);
  r->state = R_FAILED;
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, ud, 1);
  return capil_fail(L, r->fail_code, "%s", lua_tostring(L, -1));
}

/* The refusal of a member whose data has holes (see r_next). */
static int refuse_sparse(lua_State *L, Reader *r, int ud) {
  char why[128];
  snprintf(why, sizeof why, "member %d: a sparse tar member (GNU/pax sparse); "
           "OVA members must be plain files", r->index);
  return reader_refuse(L, r, ud, "SPARSE", why);
}

/* Returns the remembered failure. */
static int reader_failed(lua_State *L, Reader *r, int ud) {
  lua_getiuservalue(L, ud, 1);
  return capil_fail(L, r->fail_code, "%s", lua_tostring(L, -1));
}

static void reader_release(Reader *r) {
  if (r->a) {
    archive_read_free(r->a);
    r->a = NULL;
  }
  hasher_free(&r->h);
  if (r->fd >= 0) {
    close(r->fd);
    r->fd = -1;
  }
}

/*
** archive.reader(path [, {sha256=false}]) -> Reader | nil, msg, code
** Reads tar only (ustar, pax, gnu, v7), no compression. With sha256=true the
** whole archive's bytes are hashed as they stream by (r:sha256() at the
** end); members are then never skipped by seeking.
*/
static int l_reader(lua_State *L) {
  static const char *const opts[] = {"sha256", NULL};
  const char *path = luaL_checkstring(L, 1);
  if (!lua_isnoneornil(L, 2)) capil_check_options(L, 2, "archive.reader", opts);
  int hash = capil_opt_boolean(L, 2, "archive.reader", "sha256", 0);
  if (strlen(path) >= sizeof ((Reader *)0)->path) return luaL_argerror(L, 1, "path too long");

  Reader *r = lua_newuserdatauv(L, sizeof *r, 1);
  int ud = lua_gettop(L);
  memset(r, 0, sizeof *r);
  r->fd = -1;
  r->closed = 1;
  snprintf(r->path, sizeof r->path, "%s", path);
  luaL_setmetatable(L, READER_MT);

  /* O_NONBLOCK: opening a FIFO must not wait for a writer */
  r->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (r->fd < 0) return capil_fail_errno(L, errno, "archive.reader: %s", path);
  struct stat st;
  int err = fstat(r->fd, &st) != 0 ? errno : S_ISDIR(st.st_mode) ? EISDIR : 0;
  if (!err && !S_ISREG(st.st_mode)) {
    reader_release(r);
    return capil_fail(L, "EFTYPE", "archive.reader: %s: is %s, not a regular file", path,
                      S_ISFIFO(st.st_mode) ? "a FIFO" : S_ISCHR(st.st_mode) ? "a character device"
                      : S_ISBLK(st.st_mode) ? "a block device" : "not a plain file");
  }
  if (!err && fcntl(r->fd, F_SETFL, fcntl(r->fd, F_GETFL) & ~O_NONBLOCK) != 0) err = errno;
  if (!err && hash) err = hasher_init(&r->h, 1);
  if (err) {
    reader_release(r);
    return capil_fail_errno(L, err, "archive.reader: %s", path);
  }
  posix_fadvise(r->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  r->hash = hash;
  r->closed = 0;
  r->a = archive_read_new();
  int ok = r->a && archive_read_support_format_tar(r->a) == ARCHIVE_OK;
  if (ok) ok = (hash ? archive_read_open(r->a, r, NULL, on_read, NULL)
                     : archive_read_open_fd(r->a, r->fd, SLOT_SIZE)) == ARCHIVE_OK;
  if (!ok) {
    int res = r->a ? reader_fail(L, r, ud, "open", NULL)
                   : capil_fail_errno(L, ENOMEM, "archive.reader: %s", path);
    r->closed = 1;
    reader_release(r);
    return res;
  }
  return 1;
}

static const char *format_name(int f) {
  switch (f) {
    case ARCHIVE_FORMAT_TAR_USTAR: return "ustar";
    case ARCHIVE_FORMAT_TAR_PAX_INTERCHANGE:
    case ARCHIVE_FORMAT_TAR_PAX_RESTRICTED: return "pax";
    case ARCHIVE_FORMAT_TAR_GNUTAR: return "gnu";
    case ARCHIVE_FORMAT_TAR: return "v7";
    default: return "unknown";
  }
}

static const char *type_name(mode_t t) {
  switch (t) {
    case AE_IFREG: return "file";
    case AE_IFDIR: return "dir";
    case AE_IFLNK: return "symlink";
    default: return "other";
  }
}

/*
** r:next() -> {name, size, type, mode, mtime, format, index} | nil (end)
**           | nil, msg, code ("TRUNCATED", "NOT_TAR", "ARCHIVE", "EINTR"...)
** Skips whatever is left of the previous member's data.
*/
static int r_next(lua_State *L) {
  Reader *r = check_reader(L, 1);
  if (r->state == R_FAILED) return reader_failed(L, r, 1);
  if (r->state == R_END) { lua_pushnil(L); return 1; }
  struct archive_entry *e;
  int st = archive_read_next_header(r->a, &e);
  if (st == ARCHIVE_EOF) {
    r->state = R_END;
    lua_pushnil(L);
    return 1;
  }
  if (st != ARCHIVE_OK) {
    char what[32];
    snprintf(what, sizeof what, "member %d", r->index + 1);
    return reader_fail(L, r, 1, "next", what);
  }
  r->index++;
  r->state = R_MEMBER;
  r->size = archive_entry_size(e);
  r->pos = 0;
  /* OVF tools never write sparse members; their data would be the listed
  ** blocks only, and a small archive could claim a huge disk */
  if (archive_entry_sparse_count(e) > 0) {
    const char *sname = archive_entry_pathname(e);
    char why[512];
    snprintf(why, sizeof why, "member %d (%.300s): a sparse tar member (GNU/pax sparse); "
             "OVA members must be plain files", r->index, sname ? sname : "");
    return reader_refuse(L, r, 1, "SPARSE", why);
  }
  if (r->size < 0) {
    char why[64];
    snprintf(why, sizeof why, "member %d: negative size in its header", r->index);
    return reader_refuse(L, r, 1, "ARCHIVE", why);
  }
  lua_createtable(L, 0, 7);
  const char *name = archive_entry_pathname(e);
  lua_pushstring(L, name ? name : "");
  lua_setfield(L, -2, "name");
  lua_pushinteger(L, (lua_Integer)r->size);
  lua_setfield(L, -2, "size");
  lua_pushstring(L, type_name(archive_entry_filetype(e)));
  lua_setfield(L, -2, "type");
  lua_pushinteger(L, (lua_Integer)archive_entry_perm(e));
  lua_setfield(L, -2, "mode");
  lua_pushinteger(L, (lua_Integer)archive_entry_mtime(e));
  lua_setfield(L, -2, "mtime");
  lua_pushstring(L, format_name(archive_format(r->a)));
  lua_setfield(L, -2, "format");
  lua_pushinteger(L, r->index);
  lua_setfield(L, -2, "index");
  return 1;
}

static int write_all(int fd, const void *p, size_t n, off_t at) {
  const char *c = p;
  while (n > 0) {
    ssize_t k = pwrite(fd, c, n, at);
    if (k < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    c += k;
    at += k;
    n -= (size_t)k;
  }
  return 0;
}

/*
** r:read_member([{sha256=true, keep=0, out_path=, progress=}])
**   -> {size, sha256?, data?, truncated?} | nil, msg, code
** Reads the current member's data to its end, once: hashed, its first
** `keep` bytes returned as data (truncated=true when there was more), and
** written to out_path when given (created or truncated; removed on failure).
** Data with holes (a sparse member) fails with code "SPARSE".
*/
static int r_read_member(lua_State *L) {
  static const char *const opts[] = {"sha256", "keep", "out_path", "progress", NULL};
  Reader *r = check_reader(L, 1);
  if (!lua_isnoneornil(L, 2)) capil_check_options(L, 2, "reader:read_member", opts);
  int want = capil_opt_boolean(L, 2, "reader:read_member", "sha256", 1);
  lua_Integer keep = capil_opt_integer(L, 2, "reader:read_member", "keep", 0);
  const char *out_path = capil_opt_string(L, 2, "reader:read_member", "out_path", NULL, NULL);
  if (keep < 0) return luaL_error(L, "reader:read_member: keep must not be negative");
  capil_opt_field(L, 2, "progress");
  struct capil_progress *prog = capil_progress_opt(L, -1);
  if (r->state == R_FAILED) return reader_failed(L, r, 1);
  if (r->state != R_MEMBER)
    return luaL_error(L, "reader:read_member: no current member (call next() first)");
  int64_t size = r->size < 0 ? 0 : r->size;
  size_t kept_cap = (size_t)(keep < size ? keep : size);
  /* owned by the stack, so an error below leaks nothing */
  unsigned char *kept = lua_newuserdatauv(L, kept_cap ? kept_cap : 1, 0);
  capil_progress_total(prog, (uint64_t)size);

  /* nothing below raises until the fd and the digest are released */
  int ofd = -1, err = 0;
  if (out_path) {
    ofd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (ofd < 0) return capil_fail_errno(L, errno, "reader:read_member: %s", out_path);
  }
  EVP_MD_CTX *ctx = NULL;
  if (want && (!(ctx = EVP_MD_CTX_new()) || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1))
    err = ENOMEM;
  uint64_t done = 0;
  int sparse = 0;
  size_t nkept = 0;
  int st = ARCHIVE_OK;
  while (!err) {
    if (capil_interrupted()) { err = EINTR; break; }
    const void *buf;
    size_t n;
    la_int64_t off;
    st = archive_read_data_block(r->a, &buf, &n, &off);
    if (st == ARCHIVE_EOF) break;
    if (st != ARCHIVE_OK) break;
    /* a hole: a sparse member (pax 1.0 maps show up only here) */
    if (off < 0 || (uint64_t)off != done) { sparse = 1; break; }
    if (ctx) EVP_DigestUpdate(ctx, buf, n);
    if (nkept < kept_cap) {
      size_t c = kept_cap - nkept < n ? kept_cap - nkept : n;
      memcpy(kept + nkept, buf, c);
      nkept += c;
    }
    if (ofd >= 0 && n) err = write_all(ofd, buf, n, (off_t)off);
    done = (uint64_t)off + n;
    capil_progress_update(prog, done);
  }
  /* a trailing hole, or data short of the header's size */
  if (!err && !sparse && st == ARCHIVE_EOF && done != (uint64_t)size) sparse = 1;
  if (sparse) st = ARCHIVE_FATAL;
  char hex[65] = "";
  if (ctx && !err && st == ARCHIVE_EOF && !final_hex(ctx, hex)) err = ENOMEM;
  EVP_MD_CTX_free(ctx);
  if (ofd >= 0) {
    if (!err && st == ARCHIVE_EOF && ftruncate(ofd, (off_t)done) != 0) err = errno;
    if (close(ofd) != 0 && !err) err = errno;
    if (err || st != ARCHIVE_EOF) unlink(out_path);
  }
  if (err == EINTR) {
    r->rerr = EINTR;
    return reader_fail(L, r, 1, "read_member", NULL);
  }
  if (err) return capil_fail_errno(L, err, "reader:read_member: %s", out_path ? out_path : r->path);
  if (sparse) return refuse_sparse(L, r, 1);
  if (st != ARCHIVE_EOF) {
    char what[32];
    snprintf(what, sizeof what, "member %d", r->index);
    return reader_fail(L, r, 1, "read_member", what);
  }
  r->state = R_CONSUMED;
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, (lua_Integer)done);
  lua_setfield(L, -2, "size");
  if (hex[0]) {
    lua_pushstring(L, hex);
    lua_setfield(L, -2, "sha256");
  }
  if (keep > 0) {
    lua_pushlstring(L, (const char *)kept, nkept);
    lua_setfield(L, -2, "data");
    lua_pushboolean(L, done > nkept);
    lua_setfield(L, -2, "truncated");
  }
  return 1;
}

/*
** r:read() -> chunk | nil (end of the member) | nil, msg, code
** The current member's data block by block (up to 1 MiB each), for
** streaming it elsewhere (an upload) without a temp file. A sparse member
** is refused (code "SPARSE"), here as in read_member and next.
*/
static int r_read(lua_State *L) {
  Reader *r = check_reader(L, 1);
  if (r->state == R_FAILED) return reader_failed(L, r, 1);
  if (r->state != R_MEMBER) { lua_pushnil(L); return 1; }
  if (capil_interrupted()) {
    r->rerr = EINTR;
    return reader_fail(L, r, 1, "read", NULL);
  }
  const void *buf;
  size_t len;
  la_int64_t off;
  int st = archive_read_data_block(r->a, &buf, &len, &off);
  if (st == ARCHIVE_EOF && r->pos != (uint64_t)r->size) return refuse_sparse(L, r, 1);
  if (st == ARCHIVE_EOF) {
    r->state = R_CONSUMED;
    lua_pushnil(L);
    return 1;
  }
  if (st != ARCHIVE_OK) return reader_fail(L, r, 1, "read", NULL);
  if (off < 0 || (uint64_t)off != r->pos) return refuse_sparse(L, r, 1);
  r->pos += len;
  lua_pushlstring(L, buf, len);
  return 1;
}

/* r:sha256() -> hex of every byte read so far (after the end: the whole
** archive); the reader must have been opened with sha256=true. */
static int r_sha256(lua_State *L) {
  Reader *r = check_reader(L, 1);
  if (!r->hash) return luaL_error(L, "reader:sha256: open the reader with {sha256 = true}");
  if (r->state != R_END)
    return luaL_error(L, "reader:sha256: the archive has not been read to its end");
  hasher_drain(&r->h);
  /* read what follows the end blocks (padding) so the digest covers the file */
  unsigned char *slot = hasher_slot(&r->h, r->next_slot);
  ssize_t n;
  while ((n = read_full(r->fd, slot, SLOT_SIZE)) > 0) {
    hasher_inline(&r->h, slot, (size_t)n, 0);
    r->total += (uint64_t)n;
  }
  EVP_MD_CTX *copy = EVP_MD_CTX_new();
  char hex[65];
  int ok = copy && EVP_MD_CTX_copy_ex(copy, r->h.ctx) == 1 && final_hex(copy, hex);
  EVP_MD_CTX_free(copy);
  if (!ok) return luaL_error(L, "reader:sha256: digest failed");
  lua_pushstring(L, hex);
  lua_pushinteger(L, (lua_Integer)r->total);
  return 2;
}

/* r:close() — also __gc and __close; idempotent */
static int r_close(lua_State *L) {
  Reader *r = luaL_checkudata(L, 1, READER_MT);
  if (r->closed) return 0;
  r->closed = 1;
  reader_release(r);
  return 0;
}

static int r_tostring(lua_State *L) {
  Reader *r = luaL_checkudata(L, 1, READER_MT);
  lua_pushfstring(L, "archive reader %s%s", r->path, r->closed ? " (closed)" : "");
  return 1;
}

/* ====================================================================== */
/* Registration                                                           */
/* ====================================================================== */

static const luaL_Reg funcs[] = {
  {"writer", l_writer},
  {"reader", l_reader},
  {NULL, NULL}
};

static const luaL_Reg writer_methods[] = {
  {"add_data", w_add_data},
  {"add_file", w_add_file},
  {"close", w_close},
  {"abort", w_abort},
  {NULL, NULL}
};

static const luaL_Reg writer_meta[] = {
  {"__gc", w_abort},
  {"__close", w_abort},
  {"__tostring", w_tostring},
  {NULL, NULL}
};

static const luaL_Reg reader_methods[] = {
  {"next", r_next},
  {"read_member", r_read_member},
  {"read", r_read},
  {"sha256", r_sha256},
  {"close", r_close},
  {NULL, NULL}
};

static const luaL_Reg reader_meta[] = {
  {"__gc", r_close},
  {"__close", r_close},
  {"__tostring", r_tostring},
  {NULL, NULL}
};

static void create_meta(lua_State *L, const char *name, const luaL_Reg *meta,
                        const luaL_Reg *methods) {
  luaL_newmetatable(L, name);
  luaL_setfuncs(L, meta, 0);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}

int luaopen_capil_core_archive(lua_State *L) {
  create_meta(L, WRITER_MT, writer_meta, writer_methods);
  create_meta(L, READER_MT, reader_meta, reader_methods);
  luaL_newlib(L, funcs);
  return 1;
}
