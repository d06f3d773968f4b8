/*
** http.c — capil.core.http: HTTP(S) requests on libcurl.
**
** Bodies stream to and from files through C callbacks that hash (SHA-256)
** on the fly, so a multi-GiB disk image never passes through Lua. Downloads
** to `out_file` land in "<out_file>.part" and are renamed into place only
** when complete, 2xx and (with `sha256`) verified. A Session keeps one
** connection alive and a cookie store across requests; a plain request uses
** a throwaway session. No callback ever calls into Lua.
*/
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "capil.h"

#define SESSION_MT "capil.sys.http.Session"
#define TRANSFER_MT "capil.sys.http.Transfer"

#define BUFFER_SIZE (512 * 1024)      /* curl's receive buffer */
#define UPLOAD_BUFFER_SIZE (2 * 1024 * 1024) /* curl's send buffer: its maximum */
#define ERROR_BODY_MAX (64 * 1024)    /* kept of a non-2xx body meant for a file */
#define MAX_REDIRECTS 10
#define SLOTS 8                       /* buffers between curl and the disk thread */

/* A connection cache (the multi handle) and the easy handle that uses it;
** the easy handle also holds the cookie store. */
typedef struct {
  CURL *easy;
  CURLM *multi;
  int closed;
} Session;

typedef struct {
  char *p;
  size_t len, cap;
} Buf;

/* Where response body bytes go, decided at the first byte (or at the end). */
enum { SINK_UNDECIDED, SINK_MEMORY, SINK_FILE, SINK_ERROR };

/* The parsed options of one request (strings belong to the option table). */
typedef struct {
  const char *method, *url, *body, *body_file, *out_file;
  double body_offset, body_length;  /* a slice of body_file (-1: to its end) */
  const char *ca_file, *pin, *sha256;
  unsigned char cert_sha256[32];
  int has_cert_pin;
  size_t body_len;
  double tick_interval;       /* seconds between calls of the tick function */
  double timeout, connect_timeout, stall_timeout;
  int insecure, resume, follow, head;
  int fresh_connect;          /* a connection of its own, closed afterwards */
  struct capil_progress *progress;
} Request;

/*
** The disk side of a file transfer, on a helper thread: done on curl's
** thread, SHA-256 and disk I/O would stall the network between reads. Chunks
** pass through a ring of SLOTS buffers: for downloads the write callback
** fills slots that the thread writes out and hashes. For uploads the thread
** reads slots ahead of the read callback, which drains them, and hashes each
** slot only once it has been handed to curl: the digest covers exactly the
** bytes sent (whatever was read ahead and never sent is not in it), and the
** sender waits for the hash only when every slot is still unhashed.
*/
typedef struct {
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  char *slot[SLOTS];
  size_t len[SLOTS];
  size_t off;                 /* bytes filled of the head slot (downloads),
                                 taken from the tail slot (uploads) */
  unsigned head, tail;        /* slots published, slots consumed (ever) */
  unsigned hashed;            /* uploads: consumed slots hashed (<= tail) */
  int fd, upload, running, done, quit, err;
  uint64_t left;              /* bytes the reader may still read */
  EVP_MD_CTX *md;
} Disk;

/* Everything one transfer owns, in a userdata so a raise leaks nothing. */
typedef struct {
  CURL *easy;                 /* borrowed from the session, for getinfo */
  int in_fd;                  /* body_file, or -1 */
  uint64_t in_offset, in_size, sent; /* the part of body_file sent */
  int out_fd;                 /* the .part file, or -1 */
  char *part, *eff_url;       /* malloc'd */
  char local_ip[64];          /* our end of the connection */
  uint64_t offset;            /* bytes reused from an earlier .part */
  uint64_t received;          /* body bytes of this response */
  long long range_start;      /* of the response's Content-Range, or -1 */
  int sink, hash_received;
  long status;
  EVP_MD_CTX *md;
  Disk disk;
  Buf head, body;
  struct curl_slist *hdrs;
  struct capil_progress *progress;
  lua_State *L;               /* for the tick function, called between polls */
  int tick_idx;               /* its stack index, or 0 */
  double tick_interval;
  int tick_failed;
  int err;                    /* errno of a callback's failure */
  const char *fail_code;      /* or a code token for it */
  char why[256];              /* what the callback was doing */
  char errbuf[CURL_ERROR_SIZE];
  int closed;
} Transfer;

/* ====================================================================== */
/* Helpers                                                                */
/* ====================================================================== */

static Session *check_session(lua_State *L, int i) {
  Session *s = luaL_checkudata(L, i, SESSION_MT);
  if (s->closed) luaL_error(L, "attempt to use a closed http session");
  return s;
}

static int buf_add(Buf *b, const char *p, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n + 1) cap *= 2;
    char *q = realloc(b->p, cap);
    if (!q) return -1;
    b->p = q;
    b->cap = cap;
  }
  memcpy(b->p + b->len, p, n);
  b->len += n;
  b->p[b->len] = '\0';
  return 0;
}

static void buf_free(Buf *b) {
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}

static void close_fd(int *fd) {
  if (*fd >= 0) { close(*fd); *fd = -1; }
}

/* Records why a callback gave up; the transfer then fails with that. */
static void callback_failed(Transfer *t, int err, const char *code, const char *why) {
  if (t->err || t->fail_code) return; /* keep the first cause */
  t->err = err;
  t->fail_code = code;
  snprintf(t->why, sizeof t->why, "%s", why);
}

static void hex_digest(EVP_MD_CTX *md, char out[65]) {
  unsigned char d[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_DigestFinal_ex(md, d, &n);
  for (unsigned int i = 0; i < n && i < 32; i++)
    snprintf(out + 2 * i, 3, "%02x", d[i]);
}

/* Is `k` (length n) the name of a query parameter that carries a credential? */
static int sensitive_key(const char *k, size_t n) {
  static const char *const words[] = {"sig", "token", "key", "secret", "pass",
                                      "auth", "credential", "session", NULL};
  for (const char *const *w = words; *w; w++) {
    size_t wl = strlen(*w);
    for (size_t i = 0; i + wl <= n; i++)
      if (strncasecmp(k + i, *w, wl) == 0) return 1;
  }
  return 0;
}

/*
** Pushes `url` fit for messages and logs: no userinfo, no fragment, and the
** value of every query parameter named like a credential (X-Goog-Signature,
** token, api_key...) replaced by "****".
*/
static const char *push_redacted_url(lua_State *L, const char *url) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  const char *p = url, *scheme = strstr(url, "://");
  if (scheme) {
    luaL_addlstring(&b, url, (size_t)(scheme + 3 - url));
    p = scheme + 3;
    size_t auth = strcspn(p, "/?#");
    const char *at = memchr(p, '@', auth);
    while (at) { /* the last '@' of the authority ends the userinfo */
      p = at + 1;
      at = memchr(p, '@', auth - (size_t)(p - (scheme + 3)));
    }
  }
  size_t path = strcspn(p, "?#");
  luaL_addlstring(&b, p, path);
  p += path;
  if (*p == '?') {
    p++;
    luaL_addchar(&b, '?');
    while (*p && *p != '#') {
      size_t n = strcspn(p, "&#"), kn = strcspn(p, "=&#");
      if (kn < n && sensitive_key(p, kn)) {
        luaL_addlstring(&b, p, kn + 1);
        luaL_addstring(&b, "****");
      } else {
        luaL_addlstring(&b, p, n);
      }
      p += n;
      if (*p == '&') { luaL_addchar(&b, '&'); p++; }
    }
  }
  luaL_pushresult(&b);
  return lua_tostring(L, -1);
}

/* ====================================================================== */
/* The disk thread                                                        */
/* ====================================================================== */

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return errno;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Reads one slot from the file (short only at its end), unlocked; then
** publishes it. Called with d->mu held. */
static void reader_fill(Disk *d) {
  char *buf = d->slot[d->head % SLOTS];
  pthread_mutex_unlock(&d->mu);
  size_t got = 0, want = d->left < BUFFER_SIZE ? (size_t)d->left : BUFFER_SIZE;
  int err = 0;
  while (got < want) {
    ssize_t r = read(d->fd, buf + got, want - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) { err = r < 0 ? errno : 0; break; }
    got += (size_t)r;
  }
  d->left -= got;
  pthread_mutex_lock(&d->mu);
  d->err = err;
  if (got) d->len[d->head++ % SLOTS] = got;
  if (got < BUFFER_SIZE || d->left == 0) d->done = 1;
  pthread_cond_broadcast(&d->cv);
}

/*
** Upload side: reads slots ahead of the sender and hashes the slots it has
** consumed, which frees them. Reading comes first while the sender has less
** than half the ring ready, so it never waits on a hash it could overlap.
*/
static void *disk_reader(void *ud) {
  Disk *d = ud;
  pthread_mutex_lock(&d->mu);
  while (!d->quit) {
    int can_read = !d->done && !d->err && d->head - d->hashed < SLOTS;
    int can_hash = d->hashed != d->tail;
    if (can_read && (!can_hash || d->head - d->tail < SLOTS / 2)) {
      reader_fill(d);
    } else if (can_hash) {
      unsigned i = d->hashed % SLOTS;
      pthread_mutex_unlock(&d->mu);
      EVP_DigestUpdate(d->md, d->slot[i], d->len[i]);
      pthread_mutex_lock(&d->mu);
      d->hashed++;
    } else {
      pthread_cond_wait(&d->cv, &d->mu);
    }
  }
  pthread_mutex_unlock(&d->mu);
  return NULL;
}

/* Writes and hashes published slots until told the body is done. */
static void *disk_writer(void *ud) {
  Disk *d = ud;
  pthread_mutex_lock(&d->mu);
  while (!d->quit && !d->err) {
    if (d->tail == d->head) {
      if (d->done) break;
      pthread_cond_wait(&d->cv, &d->mu);
      continue;
    }
    unsigned i = d->tail % SLOTS;
    pthread_mutex_unlock(&d->mu);
    int err = write_all(d->fd, d->slot[i], d->len[i]);
    if (!err) EVP_DigestUpdate(d->md, d->slot[i], d->len[i]);
    pthread_mutex_lock(&d->mu);
    d->err = err;
    d->tail++;
    pthread_cond_broadcast(&d->cv);
  }
  pthread_mutex_unlock(&d->mu);
  return NULL;
}

/* Starts the thread on fd; returns 0 or an errno. */
static int disk_start(Disk *d, int fd, EVP_MD_CTX *md, int upload, uint64_t limit) {
  for (int i = 0; i < SLOTS; i++)
    if (!d->slot[i] && !(d->slot[i] = malloc(BUFFER_SIZE))) return ENOMEM;
  d->fd = fd;
  d->left = limit;
  d->md = md;
  d->upload = upload;
  d->head = d->tail = d->hashed = 0;
  d->off = 0;
  d->done = d->quit = d->err = 0;
  pthread_mutex_init(&d->mu, NULL);
  pthread_cond_init(&d->cv, NULL);
  int err = pthread_create(&d->thread, NULL, upload ? disk_reader : disk_writer, d);
  if (err) {
    pthread_mutex_destroy(&d->mu);
    pthread_cond_destroy(&d->cv);
    return err;
  }
  d->running = 1;
  return 0;
}

/* Ends the thread: `finish` lets a writer drain the ring first (else what it
** holds is dropped); an upload's digest is completed with the bytes the
** read callback took. Returns the thread's errno, or 0. */
static int disk_stop(Disk *d, int finish) {
  if (!d->running) return d->err;
  pthread_mutex_lock(&d->mu);
  if (finish && !d->upload) {
    if (d->off) d->len[d->head++ % SLOTS] = d->off; /* the partly filled slot */
    d->done = 1;
  } else {
    d->quit = 1;
  }
  pthread_cond_broadcast(&d->cv);
  pthread_mutex_unlock(&d->mu);
  pthread_join(d->thread, NULL);
  pthread_mutex_destroy(&d->mu);
  pthread_cond_destroy(&d->cv);
  d->running = 0;
  if (d->upload) { /* what was sent and not hashed yet, to the byte */
    for (; d->hashed != d->tail; d->hashed++)
      EVP_DigestUpdate(d->md, d->slot[d->hashed % SLOTS], d->len[d->hashed % SLOTS]);
    if (d->off) EVP_DigestUpdate(d->md, d->slot[d->tail % SLOTS], d->off);
  }
  return d->err;
}

/* Download side: copies body bytes into the ring. The slot at head is
** published when full, or at once when the writer is idle, so a slow
** transfer still reaches the disk promptly. Returns 0 or the writer's errno. */
static int disk_put(Disk *d, const char *p, size_t n) {
  while (n > 0) {
    pthread_mutex_lock(&d->mu);
    while (d->head - d->tail == SLOTS && !d->err) pthread_cond_wait(&d->cv, &d->mu);
    int err = d->err;
    pthread_mutex_unlock(&d->mu);
    if (err) return err;
    unsigned i = d->head % SLOTS; /* ours until published */
    size_t k = BUFFER_SIZE - d->off < n ? BUFFER_SIZE - d->off : n;
    memcpy(d->slot[i] + d->off, p, k);
    d->off += k;
    p += k;
    n -= k;
    pthread_mutex_lock(&d->mu);
    if (d->off == BUFFER_SIZE || d->tail == d->head) {
      d->len[i] = d->off;
      d->head++;
      d->off = 0;
      pthread_cond_broadcast(&d->cv);
    }
    pthread_mutex_unlock(&d->mu);
  }
  return 0;
}

/* Upload side: copies up to n bytes out of the ring, across as many ready
** slots as fit (curl's buffer holds four), waiting only when none is ready;
** 0 at the end of the file. Returns -1 with the reader's errno in *err. */
static ssize_t disk_get(Disk *d, char *p, size_t n, int *err) {
  pthread_mutex_lock(&d->mu);
  while (d->tail == d->head && !d->done && !d->err) pthread_cond_wait(&d->cv, &d->mu);
  *err = d->err;
  unsigned ready = d->head; /* slots before it are ours to read */
  pthread_mutex_unlock(&d->mu);
  if (*err) return -1;
  unsigned tail = d->tail;  /* only this thread moves it */
  size_t got = 0;
  while (got < n && tail != ready) {
    unsigned i = tail % SLOTS;
    size_t k = d->len[i] - d->off < n - got ? d->len[i] - d->off : n - got;
    memcpy(p + got, d->slot[i] + d->off, k);
    got += k;
    d->off += k;
    if (d->off == d->len[i]) { d->off = 0; tail++; }
  }
  if (tail != d->tail) {
    pthread_mutex_lock(&d->mu);
    d->tail = tail;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
  }
  return (ssize_t)got;
}

/* ====================================================================== */
/* Transfer state                                                         */
/* ====================================================================== */

/* Releases what a transfer holds (idempotent; also its __gc). */
static void transfer_release(Transfer *t) {
  if (t->closed) return;
  t->closed = 1;
  disk_stop(&t->disk, 0);
  for (int i = 0; i < SLOTS; i++) free(t->disk.slot[i]);
  close_fd(&t->in_fd);
  close_fd(&t->out_fd);
  free(t->part);
  free(t->eff_url);
  t->part = t->eff_url = NULL;
  buf_free(&t->head);
  buf_free(&t->body);
  curl_slist_free_all(t->hdrs);
  t->hdrs = NULL;
  EVP_MD_CTX_free(t->md);
  t->md = NULL;
}

static int transfer_gc(lua_State *L) {
  transfer_release(luaL_checkudata(L, 1, TRANSFER_MT));
  return 0;
}

static Transfer *new_transfer(lua_State *L) {
  Transfer *t = lua_newuserdatauv(L, sizeof *t, 0);
  memset(t, 0, sizeof *t);
  t->in_fd = t->out_fd = -1;
  t->range_start = -1;
  luaL_setmetatable(L, TRANSFER_MT);
  t->md = EVP_MD_CTX_new();
  if (!t->md || !EVP_DigestInit_ex(t->md, EVP_sha256(), NULL))
    luaL_error(L, "http.request: cannot initialise SHA-256");
  return t;
}

/* ====================================================================== */
/* libcurl callbacks (pure C: they never call Lua)                        */
/* ====================================================================== */

/*
** Decides where the response body goes, once the status is known: a 2xx
** meant for a file goes to the .part (appended after a 206 that starts where
** the part ends, restarted from zero after a 200), any other status to a
** capped memory buffer (the .part is left alone), everything else to memory.
*/
static int choose_sink(Transfer *t) {
  if (t->sink != SINK_UNDECIDED) return 0;
  curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->status);
  if (t->out_fd < 0) { t->sink = SINK_MEMORY; return 0; }
  if (t->status < 200 || t->status > 299) { t->sink = SINK_ERROR; return 0; }
  t->sink = SINK_FILE;
  if (t->offset > 0 && t->status == 206) {
    if (t->range_start != (long long)t->offset) {
      char why[128];
      snprintf(why, sizeof why, "resuming at byte %llu, the server sent a range from %lld",
               (unsigned long long)t->offset, t->range_start);
      callback_failed(t, 0, "EPROTO", why);
      return -1;
    }
  } else if (t->offset > 0) { /* the server ignored the Range: start over */
    t->offset = 0;
    if (ftruncate(t->out_fd, 0) != 0 || lseek(t->out_fd, 0, SEEK_SET) != 0 ||
        !EVP_DigestInit_ex(t->md, EVP_sha256(), NULL)) {
      callback_failed(t, errno, NULL, "restarting the .part file");
      return -1;
    }
  }
  int err = disk_start(&t->disk, t->out_fd, t->md, 0, UINT64_MAX);
  if (err) {
    callback_failed(t, err, NULL, "starting the disk thread");
    return -1;
  }
  return 0;
}

static size_t on_write(char *data, size_t size, size_t n, void *ud) {
  Transfer *t = ud;
  size_t len = size * n;
  if (choose_sink(t) != 0) return CURL_WRITEFUNC_ERROR;
  if (t->sink == SINK_FILE) {
    int err = disk_put(&t->disk, data, len);
    if (err) {
      callback_failed(t, err, NULL, "writing the .part file");
      return CURL_WRITEFUNC_ERROR;
    }
  } else if (t->sink == SINK_MEMORY || t->body.len < ERROR_BODY_MAX) {
    size_t keep = t->sink == SINK_ERROR && t->body.len + len > ERROR_BODY_MAX
                      ? ERROR_BODY_MAX - t->body.len : len;
    if (buf_add(&t->body, data, keep) != 0) {
      callback_failed(t, ENOMEM, NULL, "buffering the response body");
      return CURL_WRITEFUNC_ERROR;
    }
  }
  if (t->sink == SINK_MEMORY && t->hash_received) EVP_DigestUpdate(t->md, data, len);
  t->received += len;
  return len;
}

/* Collects the header block of the last response (a redirect or a
** "100 Continue" starts a new block). */
static size_t on_header(char *data, size_t size, size_t n, void *ud) {
  Transfer *t = ud;
  size_t len = size * n;
  if (len >= 5 && memcmp(data, "HTTP/", 5) == 0) {
    t->head.len = 0;
    t->range_start = -1;
  }
  if (len > 14 && strncasecmp(data, "content-range:", 14) == 0) {
    char v[64]; /* header data is not NUL-terminated */
    size_t vl = len - 14 < sizeof v - 1 ? len - 14 : sizeof v - 1;
    memcpy(v, data + 14, vl);
    v[vl] = '\0';
    if (sscanf(v, " bytes %lld-", &t->range_start) != 1) t->range_start = -1;
  }
  if (buf_add(&t->head, data, len) != 0) {
    callback_failed(t, ENOMEM, NULL, "buffering response headers");
    return 0;
  }
  return len;
}

/* Streams body_file to curl from the disk thread, which hashes what it took. */
static size_t on_read(char *buf, size_t size, size_t n, void *ud) {
  Transfer *t = ud;
  int err;
  ssize_t r = disk_get(&t->disk, buf, size * n, &err);
  if (r < 0) {
    callback_failed(t, err, NULL, "reading body_file");
    return CURL_READFUNC_ABORT;
  }
  t->sent += (uint64_t)r;
  return (size_t)r;
}

/* curl rewinds the upload for a redirect or an authentication round. */
static int on_seek(void *ud, curl_off_t offset, int origin) {
  Transfer *t = ud;
  if (offset != 0 || origin != SEEK_SET) return CURL_SEEKFUNC_CANTSEEK;
  disk_stop(&t->disk, 0);
  t->sent = 0;
  if (lseek(t->in_fd, (off_t)t->in_offset, SEEK_SET) != (off_t)t->in_offset ||
      !EVP_DigestInit_ex(t->md, EVP_sha256(), NULL) ||
      disk_start(&t->disk, t->in_fd, t->md, 1, t->in_size) != 0)
    return CURL_SEEKFUNC_FAIL;
  return CURL_SEEKFUNC_OK;
}

/* Ctrl-C aborts the transfer; the progress handle follows the bytes. */
static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow,
                       curl_off_t ultotal, curl_off_t ulnow) {
  Transfer *t = ud;
  if (capil_interrupted()) return 1;
  if (!t->progress) return 0;
  if (t->in_fd >= 0) {
    capil_progress_update(t->progress, (uint64_t)ulnow);
  } else {
    capil_progress_base(t->progress, t->offset); /* resumed bytes are not in the rate */
    if (dltotal > 0) capil_progress_total(t->progress, t->offset + (uint64_t)dltotal);
    capil_progress_update(t->progress, t->offset + (uint64_t)dlnow);
  }
  (void)ultotal;
  return 0;
}

/* ====================================================================== */
/* Setting up a request                                                   */
/* ====================================================================== */

static const char *const request_opts[] = {
  "method", "url", "headers", "body", "body_file", "out_file", "timeout",
  "connect_timeout", "stall_timeout", "ca_file", "insecure", "pin_sha256",
  "cookies", "progress", "resume", "sha256", "follow", "cert_sha256", "tick",
  "tick_interval", "body_offset", "body_length", "fresh_connect", NULL};

/* "AB:CD:..." or plain hex, 32 bytes, into out; 0 when malformed. */
static int parse_fingerprint(const char *s, unsigned char *out) {
  int n = 0;
  while (*s && n < 32) {
    if (*s == ':') { s++; continue; }
    if (!isxdigit((unsigned char)s[0]) || !isxdigit((unsigned char)s[1])) return 0;
    char byte[3] = {s[0], s[1], 0};
    out[n++] = (unsigned char)strtoul(byte, NULL, 16);
    s += 2;
  }
  return n == 32 && *s == '\0';
}

/* Reads and checks the option table (raises on misuse). */
static void parse_request(lua_State *L, int o, Request *r) {
  const char *fn = "http.request";
  capil_check_options(L, o, fn, request_opts);
  memset(r, 0, sizeof *r);
  r->url = capil_opt_string(L, o, fn, "url", NULL, NULL);
  if (!r->url) luaL_error(L, "http.request: option 'url' is required");
  r->body = capil_opt_string(L, o, fn, "body", NULL, &r->body_len);
  r->body_file = capil_opt_string(L, o, fn, "body_file", NULL, NULL);
  if (r->body && r->body_file)
    luaL_error(L, "http.request: options 'body' and 'body_file' exclude each other");
  r->body_offset = capil_opt_number(L, o, fn, "body_offset", 0);
  r->body_length = capil_opt_number(L, o, fn, "body_length", -1);
  if ((r->body_offset != 0 || r->body_length != -1) && !r->body_file)
    luaL_error(L, "http.request: options 'body_offset' and 'body_length' need 'body_file'");
  if (r->body_offset < 0 || r->body_length < -1)
    luaL_error(L, "http.request: options 'body_offset' and 'body_length' must not be negative");
  r->method = capil_opt_string(L, o, fn, "method",
                               r->body || r->body_file ? "POST" : "GET", NULL);
  for (const char *c = r->method; *c; c++)
    if (*c < 'A' || *c > 'Z')
      luaL_error(L, "http.request: method '%s' must be upper case letters", r->method);
  r->head = strcmp(r->method, "HEAD") == 0;
  /* POST, PUT and PATCH always carry a body, if empty (Content-Length: 0) */
  if (!r->body && !r->body_file && (strcmp(r->method, "POST") == 0 ||
      strcmp(r->method, "PUT") == 0 || strcmp(r->method, "PATCH") == 0))
    r->body = "";
  r->out_file = capil_opt_string(L, o, fn, "out_file", NULL, NULL);
  if (r->out_file && r->head) luaL_error(L, "http.request: out_file with a HEAD request");
  r->timeout = capil_opt_number(L, o, fn, "timeout", 0);
  r->connect_timeout = capil_opt_number(L, o, fn, "connect_timeout", 0);
  r->stall_timeout = capil_opt_number(L, o, fn, "stall_timeout", 0);
  r->ca_file = capil_opt_string(L, o, fn, "ca_file", NULL, NULL);
  r->insecure = capil_opt_boolean(L, o, fn, "insecure", 0);
  r->pin = capil_opt_string(L, o, fn, "pin_sha256", NULL, NULL);
  r->resume = capil_opt_boolean(L, o, fn, "resume", 0);
  r->follow = capil_opt_boolean(L, o, fn, "follow", 1);
  r->fresh_connect = capil_opt_boolean(L, o, fn, "fresh_connect", 0);
  r->sha256 = capil_opt_string(L, o, fn, "sha256", NULL, NULL);
  if (r->sha256 && (strlen(r->sha256) != 64 || strspn(r->sha256, "0123456789abcdefABCDEF") != 64))
    luaL_error(L, "http.request: option 'sha256' must be 64 hex digits");
  const char *fp = capil_opt_string(L, o, fn, "cert_sha256", NULL, NULL);
  if (fp && !(r->has_cert_pin = parse_fingerprint(fp, r->cert_sha256)))
    luaL_error(L, "http.request: option 'cert_sha256' must be a SHA-256 fingerprint (64 hex digits, colons allowed)");
  int tick = capil_opt_field(L, o, "tick");
  if (tick != LUA_TNIL && tick != LUA_TFUNCTION)
    luaL_error(L, "http.request: option 'tick' must be a function");
  lua_pop(L, 1);
  r->tick_interval = capil_opt_number(L, o, fn, "tick_interval", 2);
  if (r->tick_interval <= 0) luaL_error(L, "http.request: option 'tick_interval' must be positive");
  capil_opt_field(L, o, "progress");
  r->progress = capil_progress_opt(L, -1);
  lua_pop(L, 1);
}

/*
** headers = {Name = "value"} become request headers (a value of "" removes
** a header curl would add, such as Expect); cookies = {name = "value"} one
** Cookie header. Both are checked before anything is acquired.
*/
static void collect_headers(lua_State *L, int o, Transfer *t) {
  int top = lua_gettop(L);
  int type = capil_opt_field(L, o, "headers");
  if (type != LUA_TNIL && type != LUA_TTABLE)
    luaL_error(L, "http.request: option 'headers' must be a table");
  if (type == LUA_TTABLE) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "http.request: headers must be name = \"value\" strings");
      const char *k = lua_tostring(L, -2), *v = lua_tostring(L, -1);
      if (strpbrk(k, ":\r\n ") || strpbrk(v, "\r\n"))
        luaL_error(L, "http.request: bad header '%s'", k);
      const char *line = *v ? lua_pushfstring(L, "%s: %s", k, v) : lua_pushfstring(L, "%s:", k);
      struct curl_slist *l = curl_slist_append(t->hdrs, line);
      if (!l) luaL_error(L, "http.request: out of memory");
      t->hdrs = l;
      lua_pop(L, 2);
    }
  }
  lua_settop(L, top);
  type = capil_opt_field(L, o, "cookies");
  if (type != LUA_TNIL && type != LUA_TTABLE)
    luaL_error(L, "http.request: option 'cookies' must be a table");
  if (type == LUA_TTABLE) {
    lua_newtable(L); /* the "name=value" pairs, joined below */
    int n = 0;
    lua_pushnil(L);
    while (lua_next(L, top + 1)) {
      if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "http.request: cookies must be name = \"value\" strings");
      const char *k = lua_tostring(L, -2), *v = lua_tostring(L, -1);
      if (strpbrk(v, ";\r\n") || strpbrk(k, "=;\r\n ") || !*k)
        luaL_error(L, "http.request: bad cookie '%s'", k);
      lua_pushfstring(L, "%s=%s", k, v);
      lua_rawseti(L, top + 2, ++n);
      lua_pop(L, 1);
    }
    if (n) {
      luaL_Buffer b;
      luaL_buffinit(L, &b);
      luaL_addstring(&b, "Cookie: ");
      for (int i = 1; i <= n; i++) {
        if (i > 1) luaL_addstring(&b, "; ");
        lua_rawgeti(L, top + 2, i);
        luaL_addvalue(&b);
      }
      luaL_pushresult(&b);
      struct curl_slist *l = curl_slist_append(t->hdrs, lua_tostring(L, -1));
      if (!l) luaL_error(L, "http.request: out of memory");
      t->hdrs = l;
    }
  }
  lua_settop(L, top);
}

/* Opens body_file; returns 0 or an errno. */
static int open_upload(Transfer *t, const Request *r) {
  t->in_fd = open(r->body_file, O_RDONLY | O_CLOEXEC);
  if (t->in_fd < 0) return errno;
  struct stat st;
  if (fstat(t->in_fd, &st) != 0) return errno;
  if (!S_ISREG(st.st_mode)) return S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
  uint64_t size = (uint64_t)st.st_size, off = (uint64_t)r->body_offset;
  if (off > size || (r->body_length >= 0 && off + (uint64_t)r->body_length > size)) return ERANGE;
  t->in_offset = off;
  t->in_size = r->body_length >= 0 ? (uint64_t)r->body_length : size - off;
  if (lseek(t->in_fd, (off_t)off, SEEK_SET) != (off_t)off) return errno;
  posix_fadvise(t->in_fd, (off_t)off, (off_t)t->in_size, POSIX_FADV_SEQUENTIAL);
  return 0;
}

/*
** Opens "<out_file>.part". With resume, an existing part is kept and hashed
** (the digest covers the whole file) and the request asks for the rest;
** otherwise it is truncated. Returns 0 or an errno.
*/
static int open_download(Transfer *t, const Request *r) {
  size_t n = strlen(r->out_file) + sizeof ".part";
  t->part = malloc(n);
  if (!t->part) return ENOMEM;
  snprintf(t->part, n, "%s.part", r->out_file);
  t->out_fd = open(t->part, O_RDWR | O_CREAT | O_CLOEXEC | (r->resume ? 0 : O_TRUNC), 0644);
  if (t->out_fd < 0) return errno;
  if (!r->resume) return 0;
  char *buf = malloc(BUFFER_SIZE);
  if (!buf) return ENOMEM;
  int err = 0;
  for (;;) {
    if (capil_interrupted()) { err = EINTR; break; }
    ssize_t got = read(t->out_fd, buf, BUFFER_SIZE);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) { err = errno; break; }
    if (got == 0) break;
    EVP_DigestUpdate(t->md, buf, (size_t)got);
    t->offset += (uint64_t)got;
  }
  free(buf);
  return err;
}


/*
** Certificate pinning by fingerprint (vSphere's "thumbprint", SHA-256 of the
** leaf certificate's DER): the whole chain check is replaced by one
** comparison, made during the handshake, before a byte of the request goes out.
*/
static int verify_fingerprint(X509_STORE_CTX *ctx, void *arg) {
  const unsigned char *want = arg;
  X509 *leaf = X509_STORE_CTX_get0_cert(ctx);
  unsigned char got[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (!leaf || !X509_digest(leaf, EVP_sha256(), got, &n) || n != 32 || memcmp(got, want, 32) != 0) {
    X509_STORE_CTX_set_error(ctx, X509_V_ERR_CERT_REJECTED);
    return 0;
  }
  return 1;
}

static CURLcode on_ssl_ctx(CURL *e, void *sslctx, void *arg) {
  (void)e;
  SSL_CTX_set_cert_verify_callback((SSL_CTX *)sslctx, verify_fingerprint, arg);
  return CURLE_OK;
}

/* Sets every option of the easy handle for this request. */
static void setup(Session *s, Transfer *t, const Request *r) {
  CURL *e = s->easy;
  curl_easy_reset(e);
  t->easy = e;
  curl_easy_setopt(e, CURLOPT_URL, r->url);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
  curl_easy_setopt(e, CURLOPT_USERAGENT, "capil/" CAPIL_VERSION);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errbuf);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(e, CURLOPT_BUFFERSIZE, (long)BUFFER_SIZE);
  curl_easy_setopt(e, CURLOPT_UPLOAD_BUFFERSIZE, (long)UPLOAD_BUFFER_SIZE);
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, (long)r->follow);
  curl_easy_setopt(e, CURLOPT_MAXREDIRS, (long)MAX_REDIRECTS);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
  curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(e, CURLOPT_XFERINFODATA, t);
  curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
  if (r->timeout > 0) curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(r->timeout * 1000));
  if (r->connect_timeout > 0)
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(r->connect_timeout * 1000));
  if (r->stall_timeout > 0) { /* under 1 byte/s for that long */
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, (long)(r->stall_timeout + 0.999));
  }
  /* TLS: verified unless insecure; pinning works in both modes */
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, r->insecure ? 0L : 1L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, r->insecure ? 0L : 2L);
  if (r->ca_file) curl_easy_setopt(e, CURLOPT_CAINFO, r->ca_file);
  if (r->has_cert_pin) { /* the fingerprint replaces CA and name checks */
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    curl_easy_setopt(e, CURLOPT_SSL_CTX_FUNCTION, on_ssl_ctx);
    curl_easy_setopt(e, CURLOPT_SSL_CTX_DATA, (void *)r->cert_sha256);
  }
  if (r->pin) {
    char pin[256];
    snprintf(pin, sizeof pin, "%s%s", strncmp(r->pin, "sha256//", 8) == 0 ? "" : "sha256//", r->pin);
    curl_easy_setopt(e, CURLOPT_PINNEDPUBLICKEY, pin);
  }
  /* the method and the request body */
  if (r->head) {
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else if (r->body_file) {
    curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read);
    curl_easy_setopt(e, CURLOPT_READDATA, t);
    curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, on_seek);
    curl_easy_setopt(e, CURLOPT_SEEKDATA, t);
    if (strcmp(r->method, "POST") == 0) {
      curl_easy_setopt(e, CURLOPT_POST, 1L);
      curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)t->in_size);
    } else {
      curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
      curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, (curl_off_t)t->in_size);
    }
    if (t->progress) capil_progress_total(t->progress, t->in_size);
  } else if (r->body) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
  }
  /* what the options above already imply needs no custom method */
  int uploading = r->body || r->body_file;
  if (!r->head && !(strcmp(r->method, "GET") == 0 && !uploading) &&
      !(strcmp(r->method, "POST") == 0 && uploading) &&
      !(strcmp(r->method, "PUT") == 0 && r->body_file))
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, r->method);
  if (t->offset > 0) {
    char range[32];
    snprintf(range, sizeof range, "%llu-", (unsigned long long)t->offset);
    curl_easy_setopt(e, CURLOPT_RANGE, range);
  }
  if (t->hdrs) curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->hdrs);
  /*
  ** fresh_connect: libcurl silently resends a request when a kept-alive
  ** connection turns out dead (closed by the server while idle, or reset
  ** before the first byte of the answer). For a call that is not idempotent
  ** (CreateVM_Task, ImportVApp, a chunk the server may already hold) that
  ** may repeat it; a new connection, closed after the answer, never does.
  */
  if (r->fresh_connect) {
    curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
    curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
  }
}

/* ====================================================================== */
/* Running a request                                                      */
/* ====================================================================== */

/*
** The tick function (an export lease's keep-alive, say) runs between polls,
** on this thread, with the bytes moved so far; libcurl is not inside a
** callback then, so it may make requests of its own on another session.
** Its error, a `false` or a `nil, message` return ends the transfer with
** code ETICK.
*/
static int call_tick(Transfer *t) {
  lua_State *L = t->L;
  lua_pushvalue(L, t->tick_idx);
  lua_pushinteger(L, (lua_Integer)(t->sent ? t->sent : t->offset + t->received));
  int ok = lua_pcall(L, 1, 2, 0) == LUA_OK;
  int stop = ok && ((lua_isboolean(L, -2) && !lua_toboolean(L, -2)) ||
                    (lua_isnil(L, -2) && lua_type(L, -1) == LUA_TSTRING));
  if (ok && !stop) { lua_pop(L, 2); return 1; }
  const char *msg = lua_tostring(L, -1);
  snprintf(t->why, sizeof t->why, "tick: %s", msg ? msg : "stopped the transfer");
  t->tick_failed = 1;
  lua_pop(L, ok ? 2 : 1);
  return 0;
}

/* Drives the transfer, waking at least every 100 ms to notice Ctrl-C. */
static CURLcode perform(Session *s, Transfer *t) {
  CURLcode res = CURLE_OK;
  if (curl_multi_add_handle(s->multi, s->easy) != CURLM_OK) return CURLE_FAILED_INIT;
  int running = 1;
  double next_tick = t->tick_idx ? capil_now() + t->tick_interval : 0;
  while (running) {
    if (curl_multi_perform(s->multi, &running) != CURLM_OK) { res = CURLE_FAILED_INIT; break; }
    if (!running) break;
    if (capil_interrupted()) { res = CURLE_ABORTED_BY_CALLBACK; break; }
    if (t->tick_idx && capil_now() >= next_tick) {
      if (!call_tick(t)) { res = CURLE_ABORTED_BY_CALLBACK; break; }
      next_tick = capil_now() + t->tick_interval;
    }
    curl_multi_poll(s->multi, NULL, 0, 100, NULL);
  }
  int left;
  CURLMsg *m;
  while ((m = curl_multi_info_read(s->multi, &left)))
    if (m->msg == CURLMSG_DONE && m->easy_handle == s->easy) res = m->data.result;
  curl_multi_remove_handle(s->multi, s->easy);
  curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &t->status);
  char *url = NULL, *ip = NULL;
  curl_easy_getinfo(s->easy, CURLINFO_EFFECTIVE_URL, &url);
  if (url) t->eff_url = strdup(url);
  curl_easy_getinfo(s->easy, CURLINFO_LOCAL_IP, &ip);
  if (ip) snprintf(t->local_ip, sizeof t->local_ip, "%s", ip);
  return res;
}

/* The stable code token for a failed transfer. */
static const char *error_code(Transfer *t, CURLcode res) {
  if (capil_interrupted()) return "EINTR";
  if (t->tick_failed) return "ETICK";
  switch (res) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY: return "EDNS";
    case CURLE_COULDNT_CONNECT: {
      long e = 0;
      curl_easy_getinfo(t->easy, CURLINFO_OS_ERRNO, &e);
      if (e == ETIMEDOUT) return "ETIMEDOUT";
      if (e == EHOSTUNREACH) return "EHOSTUNREACH";
      if (e == ENETUNREACH) return "ENETUNREACH";
      return "ECONNREFUSED";
    }
    case CURLE_OPERATION_TIMEDOUT: return "ETIMEDOUT";
    case CURLE_SSL_CONNECT_ERROR: case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE: case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_CERTPROBLEM: case CURLE_SSL_CIPHER: case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_CRL_BADFILE: case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED: case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_SHUTDOWN_FAILED: case CURLE_USE_SSL_FAILED:
    case CURLE_SSL_CLIENTCERT: return "TLS";
    case CURLE_PARTIAL_FILE: case CURLE_RECV_ERROR: case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING: case CURLE_HTTP2: case CURLE_HTTP2_STREAM: return "ECONNRESET";
    case CURLE_URL_MALFORMAT: case CURLE_UNSUPPORTED_PROTOCOL: return "EURL";
    case CURLE_TOO_MANY_REDIRECTS: return "EREDIRECT";
    case CURLE_OUT_OF_MEMORY: return "ENOMEM";
    case CURLE_WRITE_ERROR: case CURLE_READ_ERROR: case CURLE_ABORTED_BY_CALLBACK:
      if (t->fail_code) return t->fail_code;
      if (t->err) return capil_errno_code(t->err);
      return "EIO";
    default: return "EIO";
  }
}

/* Pushes the last response's headers as {lowercase-name = value}; repeated
** headers are joined with ", " (Set-Cookie with "\n"). The status line's
** reason phrase goes to the response table at `res`. */
static void push_headers(lua_State *L, Transfer *t, int res) {
  lua_newtable(L);
  int tbl = lua_gettop(L);
  const char *p = t->head.p;
  while (p && *p) {
    const char *eol = strchr(p, '\n');
    size_t ll = eol ? (size_t)(eol - p) : strlen(p);
    while (ll && (p[ll - 1] == '\r' || p[ll - 1] == ' ')) ll--;
    const char *colon = memchr(p, ':', ll);
    if (ll >= 5 && memcmp(p, "HTTP/", 5) == 0) {
      const char *sp = memchr(p, ' ', ll);
      sp = sp ? memchr(sp + 1, ' ', ll - (size_t)(sp + 1 - p)) : NULL;
      lua_pushlstring(L, sp ? sp + 1 : "", sp ? ll - (size_t)(sp + 1 - p) : 0);
      lua_setfield(L, res, "reason");
    } else if (colon && colon > p) {
      luaL_Buffer b;
      char *name = luaL_buffinitsize(L, &b, (size_t)(colon - p));
      for (size_t i = 0; i < (size_t)(colon - p); i++) name[i] = (char)tolower((unsigned char)p[i]);
      luaL_pushresultsize(&b, (size_t)(colon - p));
      const char *v = colon + 1;
      while (v < p + ll && (*v == ' ' || *v == '\t')) v++;
      lua_pushvalue(L, -1);
      if (lua_rawget(L, tbl) == LUA_TSTRING) {
        lua_pushstring(L, strcmp(lua_tostring(L, -2), "set-cookie") == 0 ? "\n" : ", ");
        lua_pushlstring(L, v, (size_t)(p + ll - v));
        lua_concat(L, 3);
      } else {
        lua_pop(L, 1);
        lua_pushlstring(L, v, (size_t)(p + ll - v));
      }
      lua_rawset(L, tbl);
    }
    p = eol ? eol + 1 : NULL;
  }
}

/*
** Settles the .part of a download: renamed onto out_file when the transfer
** completed with a 2xx and the digest matches; otherwise removed, except that
** with resume=true a part that may be continued (non-empty, not refused with
** 416, not failing its digest) is kept. Returns NULL or the failure's code
** and fills `why`.
*/
static const char *settle_part(Transfer *t, const Request *r, CURLcode res,
                               const char *digest, char *why, size_t n) {
  const char *code = NULL;
  int complete = res == CURLE_OK && t->sink == SINK_FILE;
  if (complete && r->sha256 && strcasecmp(digest, r->sha256) != 0) {
    snprintf(why, n, "SHA-256 mismatch: got %s, expected %s", digest, r->sha256);
    code = "EDIGEST";
  }
  struct stat st;
  int nonempty = fstat(t->out_fd, &st) == 0 && st.st_size > 0;
  int err = close(t->out_fd) != 0 ? errno : 0;
  t->out_fd = -1;
  if (complete && !code && err) {
    snprintf(why, n, "closing %s: %s", t->part, strerror(err));
    code = capil_errno_code(err);
  }
  if (complete && !code) {
    if (rename(t->part, r->out_file) == 0) return NULL;
    snprintf(why, n, "renaming %s: %s", t->part, strerror(errno));
    code = capil_errno_code(errno);
  }
  int keep = r->resume && !complete && nonempty && t->status != 416;
  if (!keep) unlink(t->part);
  return code;
}

/* The common body of http.request and session:request. */
static int do_request(lua_State *L, Session *s, int o) {
  Request r;
  parse_request(L, o, &r);
  const char *shown = push_redacted_url(L, r.url);
  Transfer *t = new_transfer(L);
  t->progress = r.progress;
  if (capil_opt_field(L, o, "tick") == LUA_TFUNCTION) {
    t->L = L;
    t->tick_idx = lua_gettop(L);  /* stays on the stack for the transfer */
    t->tick_interval = r.tick_interval;
  } else {
    lua_pop(L, 1);
  }
  collect_headers(L, o, t);
  int err = 0;
  if (r.body_file && ((err = open_upload(t, &r)) != 0 ||
                      (err = disk_start(&t->disk, t->in_fd, t->md, 1, t->in_size)) != 0))
    return capil_fail_errno(L, err, "http.request: %s %s: %s", r.method, shown, r.body_file);
  if (r.out_file && (err = open_download(t, &r)) != 0) {
    if (t->out_fd >= 0 && !r.resume) unlink(t->part);
    return capil_fail_errno(L, err, "http.request: %s %s: %s.part", r.method, shown, r.out_file);
  }
  int uploading = r.body || r.body_file;
  t->hash_received = !uploading;
  if (r.body) EVP_DigestUpdate(t->md, r.body, r.body_len);

  setup(s, t, &r);
  CURLcode res = perform(s, t);
  if (res == CURLE_OK) choose_sink(t); /* an empty body still settles */
  err = disk_stop(&t->disk, 1); /* what arrived is good to resume from */
  if (err && res == CURLE_OK && !r.body_file) { /* the last writes failed */
    callback_failed(t, err, NULL, "writing the .part file");
    res = CURLE_WRITE_ERROR;
  }
  uint64_t offset = t->offset;
  char digest[65] = "", why[768] = "";
  hex_digest(t->md, digest);
  const char *code = NULL;
  if (res != CURLE_OK) {
    code = error_code(t, res);
    if (strcmp(code, "EINTR") == 0)
      snprintf(why, sizeof why, "interrupted");
    else if (*t->why) /* a callback's own failure */
      snprintf(why, sizeof why, "%s%s%s", t->why, t->err ? ": " : "", t->err ? strerror(t->err) : "");
    else
      snprintf(why, sizeof why, "%s", *t->errbuf ? t->errbuf : curl_easy_strerror(res));
  } else if (r.sha256 && !r.out_file && t->status >= 200 && t->status <= 299 &&
             strcasecmp(digest, r.sha256) != 0) {
    snprintf(why, sizeof why, "SHA-256 mismatch: got %s, expected %s", digest, r.sha256);
    code = "EDIGEST";
  }
  const char *part_code = t->out_fd >= 0 ? settle_part(t, &r, res, digest, why, sizeof why) : NULL;
  if (!code) code = part_code;
  curl_easy_reset(s->easy); /* drop the pointers into this transfer */
  if (code) {
    transfer_release(t);
    return capil_fail(L, code, "http.request: %s %s: %s", r.method, shown, why);
  }

  lua_createtable(L, 0, 9);
  int res_idx = lua_gettop(L);
  lua_pushinteger(L, t->status);
  lua_setfield(L, res_idx, "status");
  lua_pushliteral(L, "");
  lua_setfield(L, res_idx, "reason");
  push_headers(L, t, res_idx);
  lua_setfield(L, res_idx, "headers");
  if (t->sink == SINK_FILE) {
    lua_pushstring(L, r.out_file);
    lua_setfield(L, res_idx, "file");
  } else {
    lua_pushlstring(L, t->body.p ? t->body.p : "", t->body.len);
    lua_setfield(L, res_idx, "body");
  }
  /* no digest for an error page instead of a download, or an upload the
  ** server answered before taking all of it */
  if (uploading ? !r.body_file || t->sent == t->in_size : t->sink != SINK_ERROR) {
    lua_pushstring(L, digest);
    lua_setfield(L, res_idx, "digest");
  }
  lua_pushinteger(L, (lua_Integer)(uploading ? (r.body ? r.body_len : t->sent)
                                   : t->sink == SINK_ERROR ? t->body.len
                                   : offset + t->received));
  lua_setfield(L, res_idx, "size");
  lua_pushinteger(L, (lua_Integer)(t->sink == SINK_FILE ? offset : 0));
  lua_setfield(L, res_idx, "resumed");
  if (*t->local_ip) {
    lua_pushstring(L, t->local_ip);
    lua_setfield(L, res_idx, "local_ip");
  }
  if (t->eff_url) {
    lua_pushstring(L, t->eff_url);
    lua_setfield(L, res_idx, "url");
  }
  transfer_release(t);
  return 1;
}

/* ====================================================================== */
/* Sessions                                                               */
/* ====================================================================== */

static int session_close(lua_State *L) {
  Session *s = luaL_checkudata(L, 1, SESSION_MT);
  if (s->closed) return 0;
  s->closed = 1;
  if (s->easy) curl_easy_cleanup(s->easy);
  if (s->multi) curl_multi_cleanup(s->multi);
  s->easy = NULL;
  s->multi = NULL;
  return 0;
}

static Session *new_session(lua_State *L) {
  Session *s = lua_newuserdatauv(L, sizeof *s, 0);
  memset(s, 0, sizeof *s);
  luaL_setmetatable(L, SESSION_MT);
  s->multi = curl_multi_init();
  s->easy = curl_easy_init();
  if (!s->multi || !s->easy) luaL_error(L, "http.session: cannot initialise libcurl");
  /* Start the in-memory cookie store for good (curl_easy_reset keeps it):
  ** adding a cookie creates it, "ALL" empties it. The usual COOKIEFILE ""
  ** would leak its file list at every reset in curl 7.88. */
  curl_easy_setopt(s->easy, CURLOPT_COOKIELIST, "Set-Cookie: capil=1; domain=capil.invalid");
  curl_easy_setopt(s->easy, CURLOPT_COOKIELIST, "ALL");
  return s;
}

/*
** http.request{method=, url=, headers=, body= | body_file=, out_file=, resume=,
**   sha256=, timeout=, connect_timeout=, stall_timeout=, ca_file=, insecure=,
**   pin_sha256=, cert_sha256=, cookies=, progress=, tick=, tick_interval=2, follow=true,
**   fresh_connect=false}
**   -> {status, reason, headers, body | file, digest, size, resumed, url, local_ip}
**    | nil, msg, code
** A 4xx/5xx status is a response, not a failure. `digest` is the SHA-256 of
** the body sent (when there is one) or received (with out_file, of the whole
** file). out_file goes through "<out_file>.part" (see settle_part); codes:
** ECONNREFUSED, ETIMEDOUT, EDNS, TLS, ECONNRESET, EINTR, EDIGEST, EPROTO,
** EURL, EREDIRECT and errno names for local files.
*/
static int l_request(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  Session *s = new_session(L);
  int n = do_request(L, s, 1);
  lua_pushcfunction(L, session_close);
  lua_pushvalue(L, 2);
  lua_call(L, 1, 0);
  return n;
}

/* http.session() -> Session: keep-alive connections and a cookie store. */
static int l_session(lua_State *L) {
  new_session(L);
  return 1;
}

/* session:request(opts) — as http.request, on this session's connection. */
static int s_request(lua_State *L) {
  Session *s = check_session(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  return do_request(L, s, 2);
}

/* session:cookies() -> {name = value} of the cookies the session holds. */
static int s_cookies(lua_State *L) {
  Session *s = check_session(L, 1);
  struct curl_slist *list = NULL;
  curl_easy_getinfo(s->easy, CURLINFO_COOKIELIST, &list);
  lua_newtable(L);
  for (struct curl_slist *c = list; c; c = c->next) {
    /* Netscape format: domain, tailmatch, path, secure, expires, name, value */
    const char *f = c->data;
    for (int i = 0; i < 5 && f; i++) {
      f = strchr(f, '\t');
      if (f) f++;
    }
    const char *tab = f ? strchr(f, '\t') : NULL;
    if (!tab) continue;
    lua_pushlstring(L, f, (size_t)(tab - f));
    lua_pushstring(L, tab + 1);
    lua_rawset(L, -3);
  }
  curl_slist_free_all(list);
  return 1;
}

/* session:clear_cookies() — forgets every cookie (a logout). */
static int s_clear_cookies(lua_State *L) {
  Session *s = check_session(L, 1);
  curl_easy_setopt(s->easy, CURLOPT_COOKIELIST, "ALL");
  return 0;
}

static int s_tostring(lua_State *L) {
  Session *s = luaL_checkudata(L, 1, SESSION_MT);
  lua_pushfstring(L, "http session (%s)", s->closed ? "closed" : "open");
  return 1;
}

/* http.redact_url(url) -> url without userinfo and credential-like query values */
static int l_redact_url(lua_State *L) {
  push_redacted_url(L, luaL_checkstring(L, 1));
  return 1;
}

static const luaL_Reg funcs[] = {
  {"request", l_request},
  {"session", l_session},
  {"redact_url", l_redact_url},
  {NULL, NULL}
};

static const luaL_Reg session_methods[] = {
  {"request", s_request},
  {"cookies", s_cookies},
  {"clear_cookies", s_clear_cookies},
  {"close", session_close},
  {NULL, NULL}
};

static const luaL_Reg session_meta[] = {
  {"__gc", session_close},
  {"__close", session_close},
  {"__tostring", s_tostring},
  {"__index", NULL},
  {NULL, NULL}
};

static void create_meta(lua_State *L) {
  luaL_newmetatable(L, SESSION_MT);
  luaL_setfuncs(L, session_meta, 0);
  luaL_newlib(L, session_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_newmetatable(L, TRANSFER_MT);
  lua_pushcfunction(L, transfer_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
}

int luaopen_capil_core_http(lua_State *L) {
  static int initialised = 0;
  if (!initialised) {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
      return luaL_error(L, "capil.core.http: cannot initialise libcurl");
    initialised = 1;
  }
  create_meta(L);
  luaL_newlib(L, funcs);
  return 1;
}
