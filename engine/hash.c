/*
** hash.c — capil.core.hash: digests (OpenSSL EVP, plus CRC32C for GCS),
** files hashed in C with large sequential reads, HMAC, RS256 signatures for
** service-account JWTs, random bytes, SHA-512 crypt ("$6$", libcrypt's
** crypt_r) for installer password hashes, and the hex/base64/base64url codecs.
**
** A digest value comes out in one of three formats: "hex" (the default),
** "raw" bytes, or "base64". CRC32C's value is its 4 bytes big-endian, so
** final("base64") is the form GCS puts in x-goog-hash.
*/
#include <crypt.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

#include "capil.h"

#define DIGEST_MT "capil.sys.hash.Digest"
#define FILE_BUFSIZE (1 << 20)
#define MAX_FILE_ALGS 8

/* exported for spec/c/crc32c_test.c */
uint32_t capil_crc32c(uint32_t crc, const void *buf, size_t len);
uint32_t capil_crc32c_sw(uint32_t crc, const void *buf, size_t len);

/* ====================================================================== */
/* CRC32C (Castagnoli)                                                    */
/* ====================================================================== */

static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void) {
  for (uint32_t n = 0; n < 256; n++) {
    uint32_t c = n;
    for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    crc_table[0][n] = c;
  }
  for (uint32_t n = 0; n < 256; n++)
    for (int t = 1; t < 8; t++)
      crc_table[t][n] = (crc_table[t - 1][n] >> 8) ^ crc_table[0][crc_table[t - 1][n] & 0xFF];
}

/* Table-driven, eight bytes per step (slicing-by-8). zlib-style API: pass
** the previous result (0 to start). */
uint32_t capil_crc32c_sw(uint32_t crc, const void *buf, size_t len) {
  const unsigned char *p = buf;
  pthread_once(&crc_once, crc_init);
  crc = ~crc;
  while (len >= 8) {
    uint32_t lo = crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                         (uint32_t)p[3] << 24);
    crc = crc_table[7][lo & 0xFF] ^ crc_table[6][(lo >> 8) & 0xFF] ^
          crc_table[5][(lo >> 16) & 0xFF] ^ crc_table[4][lo >> 24] ^
          crc_table[3][p[4]] ^ crc_table[2][p[5]] ^ crc_table[1][p[6]] ^ crc_table[0][p[7]];
    p += 8;
    len -= 8;
  }
  while (len--) crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xFF];
  return ~crc;
}

#if defined(__x86_64__)
/* The SSE4.2 crc32 instruction, eight bytes at a time. */
__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const void *buf, size_t len) {
  const unsigned char *p = buf;
  uint64_t c = ~crc;
  while (len && ((uintptr_t)p & 7)) { c = _mm_crc32_u8((uint32_t)c, *p++); len--; }
  while (len >= 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    c = _mm_crc32_u64(c, v);
    p += 8;
    len -= 8;
  }
  while (len--) c = _mm_crc32_u8((uint32_t)c, *p++);
  return ~(uint32_t)c;
}
#endif

/* CRC32C with the CPU instruction when there is one. */
uint32_t capil_crc32c(uint32_t crc, const void *buf, size_t len) {
#if defined(__x86_64__)
  static int hw = -1;
  if (hw < 0) hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
  if (hw) return crc32c_hw(crc, buf, len);
#endif
  return capil_crc32c_sw(crc, buf, len);
}

/* ====================================================================== */
/* Codecs                                                                 */
/* ====================================================================== */

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char B64URL[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Pushes s in base64 (url: the URL alphabet, no padding). */
static void push_base64(lua_State *L, const unsigned char *s, size_t n, int url) {
  const char *abc = url ? B64URL : B64;
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, (n + 2) / 3 * 4);
  size_t o = 0, i = 0;
  for (; i + 2 < n; i += 3) {
    uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
    out[o++] = abc[v >> 18];
    out[o++] = abc[(v >> 12) & 63];
    out[o++] = abc[(v >> 6) & 63];
    out[o++] = abc[v & 63];
  }
  if (i < n) {
    uint32_t v = (uint32_t)s[i] << 16 | (i + 1 < n ? (uint32_t)s[i + 1] << 8 : 0);
    out[o++] = abc[v >> 18];
    out[o++] = abc[(v >> 12) & 63];
    if (i + 1 < n) out[o++] = abc[(v >> 6) & 63];
    else if (!url) out[o++] = '=';
    if (!url) out[o++] = '=';
  }
  luaL_pushresultsize(&b, o);
}

static int b64_value(int c, int url) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == (url ? '-' : '+')) return 62;
  if (c == (url ? '_' : '/')) return 63;
  return -1;
}

/* Decodes base64 (padding required) or base64url (padding optional);
** returns 1 with the bytes pushed, or 0 with a reason in *why. */
static int decode_base64(lua_State *L, const char *s, size_t n, int url, const char **why,
                         size_t *where) {
  size_t pad = 0;
  while (pad < 2 && n > pad && s[n - 1 - pad] == '=') pad++;
  size_t body = n - pad;
  if ((!url || pad) && n % 4 != 0) { *why = "length is not a multiple of 4"; *where = n; return 0; }
  if (body % 4 == 1) { *why = "truncated input"; *where = n; return 0; }
  luaL_Buffer b;
  unsigned char *out = (unsigned char *)luaL_buffinitsize(L, &b, body / 4 * 3 + 3);
  size_t o = 0;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < body; i++) {
    int v = b64_value((unsigned char)s[i], url);
    if (v < 0) {
      *why = s[i] == '=' ? "padding in the middle" : "invalid character";
      *where = i + 1;
      return 0;
    }
    acc = acc << 6 | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (unsigned char)(acc >> bits);
      acc &= (1u << bits) - 1;
    }
  }
  luaL_pushresultsize(&b, o);
  return 1;
}

static void push_hex(lua_State *L, const unsigned char *s, size_t n) {
  static const char digits[] = "0123456789abcdef";
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, n * 2);
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[s[i] >> 4];
    out[2 * i + 1] = digits[s[i] & 15];
  }
  luaL_pushresultsize(&b, n * 2);
}

static int hex_value(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

enum { FMT_HEX, FMT_RAW, FMT_BASE64 };
static const char *const fmt_names[] = {"hex", "raw", "base64", NULL};

static int name_index(const char *const names[], const char *s) {
  for (int i = 0; names[i]; i++)
    if (strcmp(names[i], s) == 0) return i;
  return -1;
}

/* The output format at idx: "hex" (default), "raw" or "base64". */
static int check_format(lua_State *L, int idx) {
  return luaL_checkoption(L, idx, "hex", fmt_names);
}

static void push_formatted(lua_State *L, const unsigned char *s, size_t n, int fmt) {
  if (fmt == FMT_RAW) lua_pushlstring(L, (const char *)s, n);
  else if (fmt == FMT_BASE64) push_base64(L, s, n, 0);
  else push_hex(L, s, n);
}

/* hash.base64_encode(s) / hash.base64url_encode(s) (unpadded) -> string */
static int l_base64_encode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  push_base64(L, (const unsigned char *)s, n, 0);
  return 1;
}

static int l_base64url_encode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  push_base64(L, (const unsigned char *)s, n, 1);
  return 1;
}

/* hash.base64_decode(s) / hash.base64url_decode(s) -> bytes | nil, msg, "DECODE" */
static int decode_base64_fn(lua_State *L, int url) {
  size_t n, where = 0;
  const char *s = luaL_checklstring(L, 1, &n);
  const char *why = NULL;
  const char *fn = url ? "hash.base64url_decode" : "hash.base64_decode";
  lua_settop(L, 1);
  if (decode_base64(L, s, n, url, &why, &where)) return 1;
  lua_settop(L, 1);
  return capil_fail(L, "DECODE", "%s: %s at byte %zu", fn, why, where);
}

static int l_base64_decode(lua_State *L) { return decode_base64_fn(L, 0); }
static int l_base64url_decode(lua_State *L) { return decode_base64_fn(L, 1); }

/* hash.hex_encode(s) -> lowercase hex */
static int l_hex_encode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  push_hex(L, (const unsigned char *)s, n);
  return 1;
}

/* hash.hex_decode(s) -> bytes | nil, msg, "DECODE" (either case accepted) */
static int l_hex_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  if (n % 2) return capil_fail(L, "DECODE", "hash.hex_decode: odd length (%zu)", n);
  luaL_Buffer b;
  unsigned char *out = (unsigned char *)luaL_buffinitsize(L, &b, n / 2);
  for (size_t i = 0; i < n; i += 2) {
    int hi = hex_value((unsigned char)s[i]), lo = hex_value((unsigned char)s[i + 1]);
    if (hi < 0 || lo < 0) {
      lua_settop(L, 1);
      return capil_fail(L, "DECODE", "hash.hex_decode: invalid character at byte %zu",
                        i + (hi < 0 ? 1 : 2));
    }
    out[i / 2] = (unsigned char)(hi << 4 | lo);
  }
  luaL_pushresultsize(&b, n / 2);
  return 1;
}

/* ====================================================================== */
/* Algorithms                                                             */
/* ====================================================================== */

#define ALG_CRC32C 0 /* algorithm index of crc32c: no EVP digest */

static const char *const alg_names[] = {"crc32c", "md5", "sha1", "sha224", "sha256",
                                        "sha384", "sha512", NULL};

static const EVP_MD *alg_md(int alg) {
  switch (alg) {
    case 1: return EVP_md5();
    case 2: return EVP_sha1();
    case 3: return EVP_sha224();
    case 4: return EVP_sha256();
    case 5: return EVP_sha384();
    case 6: return EVP_sha512();
    default: return NULL;
  }
}

/* The algorithm named at idx (default sha256 when def); raises when unknown. */
static int check_alg(lua_State *L, int idx, int def) {
  return luaL_checkoption(L, idx, def ? "sha256" : NULL, alg_names);
}

/* Fails with OpenSSL's error queue drained into the message (never any key
** material: the queue holds library reasons only). */
static int crypto_fail(lua_State *L, const char *fmt, const char *what) {
  char reasons[512] = "";
  size_t off = 0;
  unsigned long e;
  while ((e = ERR_get_error()) != 0) {
    char one[256];
    ERR_error_string_n(e, one, sizeof one);
    int w = snprintf(reasons + off, sizeof reasons - off, "%s%s", off ? "; " : "", one);
    if (w < 0 || (size_t)w >= sizeof reasons - off) { ERR_clear_error(); break; }
    off += (size_t)w;
  }
  lua_pushfstring(L, fmt, what);
  return capil_fail(L, "CRYPTO", "%s: %s", lua_tostring(L, -1), off ? reasons : "unknown error");
}

/* A running digest: an EVP context or a CRC. */
typedef struct {
  EVP_MD_CTX *ctx;
  uint32_t crc;
  int alg;
} Run;

static int run_init(Run *r, int alg) {
  r->alg = alg;
  r->crc = 0;
  r->ctx = NULL;
  if (alg == ALG_CRC32C) return 1;
  r->ctx = EVP_MD_CTX_new();
  return r->ctx && EVP_DigestInit_ex(r->ctx, alg_md(alg), NULL) == 1;
}

static int run_update(Run *r, const void *p, size_t n) {
  if (r->alg == ALG_CRC32C) { r->crc = capil_crc32c(r->crc, p, n); return 1; }
  return EVP_DigestUpdate(r->ctx, p, n) == 1;
}

/* Writes the value into out (EVP_MAX_MD_SIZE bytes); returns its length or 0. */
static size_t run_final(Run *r, unsigned char *out) {
  if (r->alg == ALG_CRC32C) {
    out[0] = (unsigned char)(r->crc >> 24);
    out[1] = (unsigned char)(r->crc >> 16);
    out[2] = (unsigned char)(r->crc >> 8);
    out[3] = (unsigned char)r->crc;
    return 4;
  }
  unsigned int n = 0;
  return EVP_DigestFinal_ex(r->ctx, out, &n) == 1 ? n : 0;
}

static void run_free(Run *r) {
  EVP_MD_CTX_free(r->ctx);
  r->ctx = NULL;
}

/* ====================================================================== */
/* Digest objects                                                         */
/* ====================================================================== */

typedef struct {
  Run run;
  int finished, closed;
} Digest;

static Digest *check_digest(lua_State *L, int i) {
  Digest *d = luaL_checkudata(L, i, DIGEST_MT);
  if (d->closed) luaL_error(L, "attempt to use a closed hash digest");
  if (d->finished) luaL_error(L, "attempt to use a finalized hash digest (%s)", alg_names[d->run.alg]);
  return d;
}

/* hash.new([alg]) -> Digest; alg: sha256 (default), sha512, sha384, sha224,
** sha1, md5, crc32c. */
static int l_new(lua_State *L) {
  int alg = check_alg(L, 1, 1);
  Digest *d = lua_newuserdatauv(L, sizeof *d, 0);
  memset(d, 0, sizeof *d);
  d->closed = 1; /* until the context exists */
  luaL_setmetatable(L, DIGEST_MT);
  if (!run_init(&d->run, alg)) {
    run_free(&d->run);
    return luaL_error(L, "hash.new: %s: cannot initialise the digest", alg_names[alg]);
  }
  d->closed = 0;
  return 1;
}

/* d:update(s) -> d */
static int d_update(lua_State *L) {
  Digest *d = check_digest(L, 1);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  if (!run_update(&d->run, s, n)) return luaL_error(L, "digest:update: %s failed", alg_names[d->run.alg]);
  lua_settop(L, 1);
  return 1;
}

/* d:final([fmt]) -> the value as "hex" (default), "raw" or "base64"; the
** digest cannot be used afterwards. */
static int d_final(lua_State *L) {
  Digest *d = check_digest(L, 1);
  int fmt = check_format(L, 2);
  unsigned char out[EVP_MAX_MD_SIZE];
  size_t n = run_final(&d->run, out);
  d->finished = 1;
  run_free(&d->run);
  if (!n) return luaL_error(L, "digest:final: %s failed", alg_names[d->run.alg]);
  push_formatted(L, out, n, fmt);
  return 1;
}

/* d:close() — also __gc and __close; idempotent */
static int d_close(lua_State *L) {
  Digest *d = luaL_checkudata(L, 1, DIGEST_MT);
  d->closed = 1;
  run_free(&d->run);
  return 0;
}

static int d_tostring(lua_State *L) {
  Digest *d = luaL_checkudata(L, 1, DIGEST_MT);
  lua_pushfstring(L, "hash digest %s%s", alg_names[d->run.alg],
                  d->closed ? " (closed)" : d->finished ? " (finalized)" : "");
  return 1;
}

/* hash.digest(alg, data [, fmt]) -> value: a one-shot digest */
static int l_digest(lua_State *L) {
  int alg = check_alg(L, 1, 0);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  int fmt = check_format(L, 3);
  unsigned char out[EVP_MAX_MD_SIZE];
  size_t len;
  if (alg == ALG_CRC32C) {
    Run r = {NULL, capil_crc32c(0, s, n), ALG_CRC32C};
    len = run_final(&r, out);
  } else {
    unsigned int m = 0;
    len = EVP_Digest(s, n, out, &m, alg_md(alg), NULL) == 1 ? m : 0;
  }
  if (!len) return crypto_fail(L, "hash.digest: %s", alg_names[alg]);
  push_formatted(L, out, len, fmt);
  return 1;
}

/* ====================================================================== */
/* Files                                                                  */
/* ====================================================================== */

/* Reads fd to the end through every running digest; 0 or an errno. */
static int hash_fd(int fd, Run *runs, int n, unsigned char *buf,
                   struct capil_progress *prog, uint64_t *done) {
  for (;;) {
    if (capil_interrupted()) return EINTR;
    ssize_t got = read(fd, buf, FILE_BUFSIZE);
    if (got < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (got == 0) return 0;
    for (int i = 0; i < n; i++)
      if (!run_update(&runs[i], buf, (size_t)got)) return EIO;
    *done += (uint64_t)got;
    capil_progress_update(prog, *done);
  }
}

/*
** hash.file(path [, alg | {alg, ...} [, {format = "hex", progress = p}]])
**   -> value | {alg = value, ...} | nil, msg, code (ENOENT, EACCES, EISDIR, EINTR...)
** Reads the file once, 1 MiB at a time with sequential read-ahead, feeding
** every requested digest; a progress handle sees the bytes go by.
*/
static int l_file(lua_State *L) {
  static const char *const opts[] = {"format", "progress", NULL};
  const char *path = luaL_checkstring(L, 1);
  int algs[MAX_FILE_ALGS], nalg = 0, as_table = lua_istable(L, 2);
  if (as_table) {
    lua_Integer len = luaL_len(L, 2);
    if (len < 1 || len > MAX_FILE_ALGS)
      return luaL_argerror(L, 2, "expected 1 to 8 algorithm names");
    for (lua_Integer i = 1; i <= len; i++) {
      lua_rawgeti(L, 2, i);
      const char *name = lua_tostring(L, -1);
      int alg = name ? name_index(alg_names, name) : -1;
      if (alg < 0) return luaL_error(L, "hash.file: unknown algorithm '%s'", luaL_tolstring(L, -1, NULL));
      algs[nalg++] = alg;
      lua_pop(L, 1);
    }
  } else {
    algs[nalg++] = check_alg(L, 2, 1);
  }
  if (!lua_isnoneornil(L, 3)) capil_check_options(L, 3, "hash.file", opts);
  const char *fmtname = capil_opt_string(L, 3, "hash.file", "format", "hex", NULL);
  int fmt = name_index(fmt_names, fmtname);
  if (fmt < 0) return luaL_error(L, "hash.file: unknown format '%s' (hex, raw, base64)", fmtname);
  capil_opt_field(L, 3, "progress");
  struct capil_progress *prog = capil_progress_opt(L, -1);
  lua_settop(L, 3);

  /* from here to the results nothing raises: every resource is freed first */
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return capil_fail_errno(L, errno, "hash.file: %s", path);
  struct stat st;
  int err = 0;
  if (fstat(fd, &st) != 0) err = errno;
  else if (S_ISDIR(st.st_mode)) err = EISDIR;
  if (!err) {
    if (S_ISREG(st.st_mode)) capil_progress_total(prog, (uint64_t)st.st_size);
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  }
  Run runs[MAX_FILE_ALGS];
  int ready = 0, crypto_err = 0;
  /* page-aligned: the kernel's copy into a buffer that is not even
  ** cache-line aligned runs ~1.5x slower, which shows in the total */
  void *buf = NULL;
  if (!err && (err = posix_memalign(&buf, 4096, FILE_BUFSIZE)) != 0) buf = NULL;
  for (; !err && ready < nalg; ready++)
    if (!run_init(&runs[ready], algs[ready])) { ready++; crypto_err = 1; break; }
  uint64_t done = 0;
  if (!err && !crypto_err) err = hash_fd(fd, runs, nalg, buf, prog, &done);
  unsigned char out[MAX_FILE_ALGS][EVP_MAX_MD_SIZE];
  size_t outlen[MAX_FILE_ALGS] = {0};
  for (int i = 0; i < ready; i++) {
    if (!err && !crypto_err && (outlen[i] = run_final(&runs[i], out[i])) == 0) crypto_err = 1;
    run_free(&runs[i]);
  }
  free(buf);
  close(fd);

  if (err == EINTR) return capil_fail(L, "EINTR", "hash.file: %s: interrupted", path);
  if (err) return capil_fail_errno(L, err, "hash.file: %s", path);
  if (crypto_err) return crypto_fail(L, "hash.file: %s", path);
  if (!as_table) {
    push_formatted(L, out[0], outlen[0], fmt);
    return 1;
  }
  lua_createtable(L, 0, nalg);
  for (int i = 0; i < nalg; i++) {
    push_formatted(L, out[i], outlen[i], fmt);
    lua_setfield(L, -2, alg_names[algs[i]]);
  }
  return 1;
}

/* ====================================================================== */
/* HMAC, RS256, random                                                    */
/* ====================================================================== */

/* hash.hmac(alg, key, data [, fmt]) -> value (alg: an EVP digest, not crc32c) */
static int l_hmac(lua_State *L) {
  int alg = check_alg(L, 1, 0);
  size_t klen, dlen;
  const char *key = luaL_checklstring(L, 2, &klen);
  const char *data = luaL_checklstring(L, 3, &dlen);
  int fmt = check_format(L, 4);
  if (alg == ALG_CRC32C) return luaL_argerror(L, 1, "crc32c cannot make an HMAC");
  if (klen > INT32_MAX) return luaL_argerror(L, 2, "key too long");
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  ERR_clear_error();
  if (!HMAC(alg_md(alg), key, (int)klen, (const unsigned char *)data, dlen, out, &n))
    return crypto_fail(L, "hash.hmac: %s", alg_names[alg]);
  push_formatted(L, out, n, fmt);
  return 1;
}

/* Refuses to prompt for a passphrase: encrypted keys fail to load. */
static int no_passphrase(char *buf, int size, int rwflag, void *u) {
  return -1;
}

static BIO *pem_bio(lua_State *L, int idx) {
  size_t n;
  const char *s = luaL_checklstring(L, idx, &n);
  if (n > INT32_MAX) luaL_argerror(L, idx, "PEM text too long");
  return BIO_new_mem_buf(s, (int)n);
}

/*
** hash.sign_rs256(pem_private_key, data) -> signature bytes | nil, msg, "CRYPTO"
** RSASSA-PKCS1-v1_5 with SHA-256 (JWT "RS256"); PKCS#8 or PKCS#1 PEM.
*/
static int l_sign_rs256(lua_State *L) {
  size_t dlen;
  luaL_checkstring(L, 1);
  const char *data = luaL_checklstring(L, 2, &dlen);
  ERR_clear_error();
  BIO *bio = pem_bio(L, 1);
  EVP_PKEY *pkey = bio ? PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL) : NULL;
  BIO_free(bio);
  if (!pkey) return crypto_fail(L, "hash.sign_rs256: %s", "cannot read the PEM private key");
  if (EVP_PKEY_get_base_id(pkey) != EVP_PKEY_RSA) {
    EVP_PKEY_free(pkey);
    return capil_fail(L, "CRYPTO", "hash.sign_rs256: the private key is not an RSA key");
  }
  unsigned char sig[2048]; /* up to 16384-bit keys */
  size_t siglen = sizeof sig;
  if ((size_t)EVP_PKEY_get_size(pkey) > sizeof sig) {
    EVP_PKEY_free(pkey);
    return capil_fail(L, "CRYPTO", "hash.sign_rs256: RSA keys above 16384 bits are not supported");
  }
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  int ok = ctx && EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, pkey) == 1 &&
       EVP_DigestSign(ctx, sig, &siglen, (const unsigned char *)data, dlen) == 1;
  EVP_MD_CTX_free(ctx);
  EVP_PKEY_free(pkey);
  if (!ok) return crypto_fail(L, "hash.sign_rs256: %s", "signing failed");
  lua_pushlstring(L, (const char *)sig, siglen);
  OPENSSL_cleanse(sig, sizeof sig);
  return 1;
}

/* A public key from PEM: "PUBLIC KEY" (SPKI) or an X.509 certificate. */
static EVP_PKEY *read_public_key(lua_State *L, int idx) {
  BIO *bio = pem_bio(L, idx);
  EVP_PKEY *pkey = bio ? PEM_read_bio_PUBKEY(bio, NULL, no_passphrase, NULL) : NULL;
  BIO_free(bio);
  if (pkey) return pkey;
  bio = pem_bio(L, idx);
  X509 *cert = bio ? PEM_read_bio_X509(bio, NULL, no_passphrase, NULL) : NULL;
  BIO_free(bio);
  if (!cert) return NULL;
  ERR_clear_error(); /* the failed PUBKEY attempt */
  pkey = X509_get_pubkey(cert);
  X509_free(cert);
  return pkey;
}

/*
** hash.verify_rs256(pem_public_key_or_cert, data, signature)
**   -> true | false (does not verify) | nil, msg, "CRYPTO" (unusable key)
*/
static int l_verify_rs256(lua_State *L) {
  size_t dlen, slen;
  luaL_checkstring(L, 1);
  const char *data = luaL_checklstring(L, 2, &dlen);
  const char *sig = luaL_checklstring(L, 3, &slen);
  ERR_clear_error();
  EVP_PKEY *pkey = read_public_key(L, 1);
  if (!pkey) return crypto_fail(L, "hash.verify_rs256: %s", "cannot read the PEM public key or certificate");
  if (EVP_PKEY_get_base_id(pkey) != EVP_PKEY_RSA) {
    EVP_PKEY_free(pkey);
    return capil_fail(L, "CRYPTO", "hash.verify_rs256: the public key is not an RSA key");
  }
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  int ok = ctx && EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, pkey) == 1;
  int valid = ok && EVP_DigestVerify(ctx, (const unsigned char *)sig, slen,
                                     (const unsigned char *)data, dlen) == 1;
  EVP_MD_CTX_free(ctx);
  EVP_PKEY_free(pkey);
  if (!ok) return crypto_fail(L, "hash.verify_rs256: %s", "cannot set up verification");
  ERR_clear_error(); /* a bad signature leaves reasons behind */
  lua_pushboolean(L, valid);
  return 1;
}

/* hash.random(n) -> n bytes from the CSPRNG | nil, msg, "CRYPTO" */
static int l_random(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 0 && n <= (1 << 20), 1, "must be 0..1048576");
  luaL_Buffer b;
  unsigned char *p = (unsigned char *)luaL_buffinitsize(L, &b, (size_t)n);
  ERR_clear_error();
  if (n > 0 && RAND_bytes(p, (int)n) != 1) return crypto_fail(L, "hash.random: %s", "RAND_bytes");
  luaL_pushresultsize(&b, (size_t)n);
  return 1;
}

/* hash.crypt_sha512(password, salt) -> "$6$<salt>$<hash>" | nil, msg, "CRYPTO"
** SHA-512 crypt (the /etc/shadow form installers take: `openssl passwd -6`),
** 5000 rounds. The salt is 1..16 characters of [./0-9A-Za-z]; the password
** must not contain NUL. The buffer that held the password is wiped. */
static int l_crypt_sha512(lua_State *L) {
  size_t plen, slen;
  const char *pw = luaL_checklstring(L, 1, &plen);
  const char *salt = luaL_checklstring(L, 2, &slen);
  luaL_argcheck(L, memchr(pw, 0, plen) == NULL, 1, "must not contain NUL");
  luaL_argcheck(L, slen >= 1 && slen <= 16, 2, "must be 1..16 characters");
  for (size_t i = 0; i < slen; i++) {
    unsigned char c = (unsigned char)salt[i];
    int ok = c == '.' || c == '/' || (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
    luaL_argcheck(L, ok, 2, "must be characters of [./0-9A-Za-z]");
  }
  char setting[3 + 16 + 1];
  memcpy(setting, "$6$", 3);
  memcpy(setting + 3, salt, slen);
  setting[3 + slen] = 0;
  struct crypt_data *data = calloc(1, sizeof(*data));
  if (!data) return crypto_fail(L, "hash.crypt_sha512: %s", "out of memory");
  const char *out = crypt_r(pw, setting, data);
  if (!out || out[0] != '$' || strncmp(out, "$6$", 3) != 0) {
    explicit_bzero(data, sizeof(*data));
    free(data);
    lua_pushnil(L);
    lua_pushstring(L, "hash.crypt_sha512: libcrypt has no SHA-512 crypt");
    lua_pushstring(L, "CRYPTO");
    return 3;
  }
  lua_pushstring(L, out);
  explicit_bzero(data, sizeof(*data));
  free(data);
  return 1;
}

/* ====================================================================== */
/* Registration                                                           */
/* ====================================================================== */

static const luaL_Reg funcs[] = {
  {"new", l_new},
  {"digest", l_digest},
  {"file", l_file},
  {"hmac", l_hmac},
  {"sign_rs256", l_sign_rs256},
  {"verify_rs256", l_verify_rs256},
  {"random", l_random},
  {"crypt_sha512", l_crypt_sha512},
  {"base64_encode", l_base64_encode},
  {"base64_decode", l_base64_decode},
  {"base64url_encode", l_base64url_encode},
  {"base64url_decode", l_base64url_decode},
  {"hex_encode", l_hex_encode},
  {"hex_decode", l_hex_decode},
  {NULL, NULL}
};

static const luaL_Reg methods[] = {
  {"update", d_update},
  {"final", d_final},
  {"close", d_close},
  {NULL, NULL}
};

static const luaL_Reg meta[] = {
  {"__gc", d_close},
  {"__close", d_close},
  {"__tostring", d_tostring},
  {NULL, NULL}
};

static void create_meta(lua_State *L) {
  luaL_newmetatable(L, DIGEST_MT);
  luaL_setfuncs(L, meta, 0);
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}

int luaopen_capil_core_hash(lua_State *L) {
  create_meta(L);
  luaL_newlib(L, funcs);
  return 1;
}
