/*
 * bytes_readers.c: unmodified pull-style C readers over one byte stream, in
 * one pass.  The test builds a tar.gz (libarchive's archive_write) and an
 * XML document in memory, then runs, on one engine (argv[1]) and windows 1,
 * 7, 4096 and the default: libarchive listing the archive through
 * archive_read_open with a zero-copy lockstep_take callback, libxml2's
 * xmlReaderForIO reading through lockstep_read, zlib's crc32 and OpenSSL's
 * EVP SHA-256 as references, readers that make tiny reads (1 to 4 bytes),
 * stop early, or fail.  Every result must equal the same library run alone
 * over the whole data.  The source returns short reads of varying size;
 * then the same from a real pipe(2) fed by a writer process, and from a
 * child's standard input.  These libraries are test dependencies only.
 *
 * Usage: test_bytes_readers ENGINE   (fiber, thread or buffer)
 */
#include "check.h"
#include "engine_arg.h"
#include "lockstep.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <libxml/xmlreader.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

static lockstep_engine engine;

/* ------------------------------------------------------------------------
 * The data, built in the test.
 * ------------------------------------------------------------------------ */

typedef struct {
    unsigned char *data;
    size_t len;
} blob;

/* An XML document of n items with attributes and text. */
static blob make_xml(int n)
{
    size_t cap = (size_t)n * 96 + 64, len = 0;
    unsigned char *p = malloc(cap);
    CHECK(p != NULL);
    len += (size_t)snprintf((char *)p + len, cap - len, "<?xml version=\"1.0\"?>\n<root>\n");
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf((char *)p + len, cap - len,
                                "  <item id=\"%d\" v=\"%d\">text %d &amp; more</item>\n", i,
                                (i * 37) % 1000, i);
    len += (size_t)snprintf((char *)p + len, cap - len, "</root>\n");
    return (blob){p, len};
}

/* Adds one file entry to a being written. */
static void add_file(struct archive *a, const char *name, const void *data, size_t len)
{
    struct archive_entry *e = archive_entry_new();
    archive_entry_set_pathname(e, name);
    archive_entry_set_size(e, (la_int64_t)len);
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_entry_set_mtime(e, 1700000000, 0);
    CHECK_EQ(archive_write_header(a, e), ARCHIVE_OK);
    if (len > 0)
        CHECK_EQ(archive_write_data(a, data, len), (la_ssize_t)len);
    archive_entry_free(e);
}

/* A tar.gz of a text file, pseudo-random bytes, the XML document and an
 * empty file: about 40 KiB, made with libarchive's writer. */
static blob make_targz(const blob *xml)
{
    size_t cap = 1 << 20, used = 0;
    unsigned char *out = malloc(cap);
    CHECK(out != NULL);
    struct archive *a = archive_write_new();
    CHECK_EQ(archive_write_add_filter_gzip(a), ARCHIVE_OK);
    CHECK_EQ(archive_write_set_format_pax_restricted(a), ARCHIVE_OK);
    CHECK_EQ(archive_write_open_memory(a, out, cap, &used), ARCHIVE_OK);
    size_t text_len = 60000, bin_len = 16384;
    char *text = malloc(text_len);
    unsigned char *bin = malloc(bin_len);
    CHECK(text != NULL && bin != NULL);
    for (size_t i = 0; i < text_len; i++)
        text[i] = i % 61 == 60 ? '\n' : (char)('a' + (i * 7 + i / 61) % 26);
    uint32_t x = 12345;
    for (size_t i = 0; i < bin_len; i++) {
        x = x * 1103515245u + 12345u;
        bin[i] = (unsigned char)(x >> 24);
    }
    add_file(a, "docs/readme.txt", text, text_len);
    add_file(a, "data/random.bin", bin, bin_len);
    add_file(a, "docs/doc.xml", xml->data, xml->len);
    add_file(a, "empty", "", 0);
    CHECK_EQ(archive_write_close(a), ARCHIVE_OK);
    archive_write_free(a);
    free(text);
    free(bin);
    return (blob){out, used};
}

/* ------------------------------------------------------------------------
 * Readers: each is one library's ordinary loop, given a read callback.
 * ------------------------------------------------------------------------ */

/* What libarchive lists: entries, and a CRC over names, sizes and data. */
typedef struct {
    long entries;
    uint32_t crc;
} listing;

/* Lists the archive a has been opened on; returns 0 or ARCHIVE_FATAL. */
static int list_archive(struct archive *a, listing *out)
{
    struct archive_entry *e;
    int rc;
    out->entries = 0;
    out->crc = (uint32_t)crc32(0, NULL, 0);
    while ((rc = archive_read_next_header(a, &e)) == ARCHIVE_OK) {
        const char *name = archive_entry_pathname(e);
        la_int64_t size = archive_entry_size(e);
        out->crc = (uint32_t)crc32(out->crc, (const Bytef *)name, (uInt)strlen(name));
        out->crc = (uint32_t)crc32(out->crc, (const Bytef *)&size, sizeof size);
        const void *block;
        size_t len;
        la_int64_t offset;
        while ((rc = archive_read_data_block(a, &block, &len, &offset)) == ARCHIVE_OK)
            out->crc = (uint32_t)crc32(out->crc, block, (uInt)len);
        if (rc != ARCHIVE_EOF)
            return ARCHIVE_FATAL;
        out->entries++;
    }
    return rc == ARCHIVE_EOF ? 0 : ARCHIVE_FATAL;
}

/* libarchive's read callback: zero-copy, the window's own bytes.  They
 * stay valid until the next call, which is all libarchive asks. */
static la_ssize_t take_block(struct archive *a, void *client, const void **buffer)
{
    size_t count;
    *buffer = lockstep_take(client, (size_t)1 << 30, &count);
    if (*buffer == NULL && lockstep_cancelled(client)) {
        archive_set_error(a, ECANCELED, "stream cancelled");
        return -1;
    }
    return (la_ssize_t)count;
}

/* Consumer: libarchive lists the stream.  Returns 0, or 1 when libarchive
 * failed (not when the run was cancelled under it). */
static int archive_consumer(lockstep_iter *it, void *arg)
{
    struct archive *a = archive_read_new();
    archive_read_support_filter_gzip(a);
    archive_read_support_format_tar(a);
    int rc = archive_read_open(a, it, NULL, take_block, NULL);
    if (rc == ARCHIVE_OK)
        rc = list_archive(a, arg);
    archive_read_free(a);
    return rc == 0 || lockstep_cancelled(it) ? 0 : 1;
}

/* The same listing over the whole data, without lockstep. */
static listing archive_alone(const blob *b)
{
    listing l = {0, 0};
    struct archive *a = archive_read_new();
    archive_read_support_filter_gzip(a);
    archive_read_support_format_tar(a);
    CHECK_EQ(archive_read_open_memory(a, b->data, b->len), ARCHIVE_OK);
    CHECK_EQ(list_archive(a, &l), 0);
    archive_read_free(a);
    return l;
}

/* What libxml2's reader sees: elements, the sum of attribute v, text. */
typedef struct {
    long elements, v_sum, text_bytes;
} xml_summary;

/* Reads everything r offers into out; returns 0 or -1 on a parse error. */
static int walk_xml(xmlTextReaderPtr r, xml_summary *out)
{
    int rc;
    memset(out, 0, sizeof *out);
    while ((rc = xmlTextReaderRead(r)) == 1) {
        int type = xmlTextReaderNodeType(r);
        if (type == XML_READER_TYPE_ELEMENT) {
            out->elements++;
            xmlChar *v = xmlTextReaderGetAttribute(r, (const xmlChar *)"v");
            if (v != NULL) {
                out->v_sum += atol((const char *)v);
                xmlFree(v);
            }
        } else if (type == XML_READER_TYPE_TEXT) {
            const xmlChar *t = xmlTextReaderConstValue(r);
            out->text_bytes += t ? (long)strlen((const char *)t) : 0;
        }
    }
    return rc == 0 ? 0 : -1;
}

/* libxml2's read callback: a copy, as its interface wants. */
static int read_into(void *context, char *buffer, int len)
{
    return len > 0 ? (int)lockstep_read(context, buffer, (size_t)len) : 0;
}

static int xml_consumer(lockstep_iter *it, void *arg)
{
    xmlTextReaderPtr r = xmlReaderForIO(read_into, NULL, it, NULL, NULL, XML_PARSE_NONET);
    if (r == NULL)
        return 1;
    int rc = walk_xml(r, arg);
    xmlFreeTextReader(r);
    return rc == 0 || lockstep_cancelled(it) ? 0 : 1;
}

static xml_summary xml_alone(const blob *b)
{
    xml_summary x;
    xmlTextReaderPtr r = xmlReaderForMemory((const char *)b->data, (int)b->len, NULL, NULL,
                                            XML_PARSE_NONET);
    CHECK(r != NULL);
    CHECK_EQ(walk_xml(r, &x), 0);
    xmlFreeTextReader(r);
    return x;
}

/* A digest reader: SHA-256 (OpenSSL EVP) and crc32 (zlib) of the first
 * `stop` bytes (SIZE_MAX: all), asking `chunk` bytes at a time by take or,
 * with tiny set, 1 to 4 bytes at a time by read.  With fail_code set it
 * returns that code after `stop` bytes instead. */
typedef struct {
    size_t chunk;
    int tiny;
    uint64_t stop;
    int fail_code;
    /* results */
    uint64_t count;
    uint32_t crc;
    unsigned char sha[32];
} digest;

static int digest_consumer(lockstep_iter *it, void *arg)
{
    digest *d = arg;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL)) {
        EVP_MD_CTX_free(ctx);
        return 2;
    }
    d->count = 0;
    d->crc = (uint32_t)crc32(0, NULL, 0);
    unsigned char small[4];
    for (;;) {
        size_t want = d->tiny ? 1 + d->count % 4 : d->chunk;
        if (want > d->stop - d->count)
            want = (size_t)(d->stop - d->count);
        if (want == 0)
            break;
        size_t got;
        const unsigned char *p;
        if (d->tiny) {
            got = lockstep_read(it, small, want);
            p = small;
        } else {
            p = lockstep_take(it, want, &got);
        }
        if (got == 0)
            break;
        EVP_DigestUpdate(ctx, p, got);
        d->crc = (uint32_t)crc32(d->crc, p, (uInt)got);
        d->count += got;
    }
    EVP_DigestFinal_ex(ctx, d->sha, NULL);
    EVP_MD_CTX_free(ctx);
    return d->fail_code && d->count == d->stop ? d->fail_code : 0;
}

/* The same digests of the first n bytes of b, without lockstep. */
static void digest_alone(const blob *b, size_t n, uint32_t *crc, unsigned char sha[32])
{
    *crc = (uint32_t)crc32(crc32(0, NULL, 0), b->data, (uInt)n);
    EVP_Digest(b->data, n, sha, NULL, EVP_sha256(), NULL);
}

/* Checks d against the digests of the first d->count bytes, which must be
 * `expect` of them. */
static void check_digest(const blob *b, const digest *d, uint64_t expect)
{
    uint32_t crc;
    unsigned char sha[32];
    CHECK_EQ(d->count, expect);
    digest_alone(b, (size_t)expect, &crc, sha);
    CHECK_EQ(d->crc, crc);
    CHECK(memcmp(d->sha, sha, 32) == 0);
}

/* ------------------------------------------------------------------------
 * Sources.
 * ------------------------------------------------------------------------ */

/* Memory with short reads of varying size, failing at fail_at if set. */
typedef struct {
    const blob *b;
    size_t pos;
    size_t fail_at;
    unsigned calls;
} mem_source;

static long mem_read(void *arg, void *items, size_t max)
{
    mem_source *m = arg;
    if (m->pos == m->fail_at)
        return -5;
    size_t n = m->b->len - m->pos;
    /* A pipe's sort of counts: 1 byte, a few hundred, a few thousand. */
    static const size_t steps[] = {1, 300, 4096, 65536, 7};
    size_t step = steps[m->calls++ % (sizeof steps / sizeof steps[0])];
    if (n > step)
        n = step;
    if (n > max)
        n = max;
    if (m->fail_at > m->pos && n > m->fail_at - m->pos)
        n = m->fail_at - m->pos;
    memcpy(items, m->b->data + m->pos, n);
    m->pos += n;
    return (long)n;
}

/* A file descriptor: read(2), retried on EINTR. */
static long fd_read(void *arg, void *items, size_t max)
{
    int fd = *(int *)arg;
    for (;;) {
        ssize_t n = read(fd, items, max);
        if (n >= 0)
            return (long)n;
        if (errno != EINTR)
            return -errno;
    }
}

/* ------------------------------------------------------------------------
 * Runs.
 * ------------------------------------------------------------------------ */

static blob targz, xml;
static listing targz_listing;
static xml_summary xml_ref;

/* libarchive, a whole-stream digest by take, a tiny-read digest and one
 * that stops early, over the tar.gz. */
static void run_targz(size_t window)
{
    listing l = {-1, 0};
    digest d[3] = {{SIZE_MAX, 0, UINT64_MAX, 0, 0, 0, {0}},
                   {0, 1, UINT64_MAX, 0, 0, 0, {0}},
                   {512, 0, 1000, 0, 0, 0, {0}}};
    lockstep_consumer cs[4] = {{archive_consumer, &l}, {digest_consumer, &d[0]},
                               {digest_consumer, &d[1]}, {digest_consumer, &d[2]}};
    mem_source m = {&targz, 0, SIZE_MAX, 0};
    lockstep_report rep;
    lockstep_options o = engine_opts(engine, window, &rep);
    CHECK_EQ(lockstep_run_read(mem_read, &m, 1, cs, 4, &o), 0);
    CHECK_EQ(l.entries, targz_listing.entries);
    CHECK_EQ(l.crc, targz_listing.crc);
    check_digest(&targz, &d[0], targz.len);
    check_digest(&targz, &d[1], targz.len);
    check_digest(&targz, &d[2], 1000);
    CHECK_EQ(rep.items_read, targz.len);
}

/* libxml2 and two digests over the XML document. */
static void run_xml(size_t window)
{
    xml_summary x = {-1, 0, 0};
    digest d[2] = {{3, 0, UINT64_MAX, 0, 0, 0, {0}}, {4096, 0, UINT64_MAX, 0, 0, 0, {0}}};
    lockstep_consumer cs[3] = {{digest_consumer, &d[0]}, {xml_consumer, &x},
                               {digest_consumer, &d[1]}};
    mem_source m = {&xml, 0, SIZE_MAX, 0};
    lockstep_options o = engine_opts(engine, window, NULL);
    CHECK_EQ(lockstep_run_read(mem_read, &m, 1, cs, 3, &o), 0);
    CHECK_EQ(x.elements, xml_ref.elements);
    CHECK_EQ(x.v_sum, xml_ref.v_sum);
    CHECK_EQ(x.text_bytes, xml_ref.text_bytes);
    check_digest(&xml, &d[0], xml.len);
    check_digest(&xml, &d[1], xml.len);
}

/* A reader that fails at byte 5000 wins, at that position; one that read
 * everything before it is cancelled; libarchive returns cleanly.  Then the
 * source fails at byte 20000: it wins where someone needs that byte. */
static void run_failures(size_t window)
{
    listing l = {-1, 0};
    digest d[2] = {{SIZE_MAX, 0, UINT64_MAX, 0, 0, 0, {0}}, {100, 0, 5000, 77, 0, 0, {0}}};
    lockstep_consumer cs[3] = {{digest_consumer, &d[0]}, {archive_consumer, &l},
                               {digest_consumer, &d[1]}};
    mem_source m = {&targz, 0, SIZE_MAX, 0};
    lockstep_report rep;
    lockstep_options o = engine_opts(engine, window, &rep);
    CHECK_EQ(lockstep_run_read(mem_read, &m, 1, cs, 3, &o), 77);
    CHECK_EQ(rep.failed, 2);
    CHECK_EQ(rep.position, 5000);
    CHECK(d[0].count >= 5000);

    m = (mem_source){&targz, 0, 20000, 0};
    d[1].stop = 10000;
    d[1].fail_code = 0;
    CHECK_EQ(lockstep_run_read(mem_read, &m, 1, cs, 3, &o), -5);
    CHECK_EQ(rep.failed, LOCKSTEP_FAILED_SOURCE);
    CHECK_EQ(rep.position, 20000);
    check_digest(&targz, &d[0], 20000);
    check_digest(&targz, &d[1], 10000);

    /* Only readers that stop before 20000: the failure never counts. */
    m = (mem_source){&targz, 0, 20000, 0};
    d[0].stop = 15000;
    lockstep_consumer early[2] = {{digest_consumer, &d[0]}, {digest_consumer, &d[1]}};
    CHECK_EQ(lockstep_run_read(mem_read, &m, 1, early, 2, &o), 0);
    check_digest(&targz, &d[0], 15000);
}

/* The tar.gz read from fd by libarchive and a digest, checked. */
static void run_fd(int fd, size_t window)
{
    listing l = {-1, 0};
    digest d = {SIZE_MAX, 0, UINT64_MAX, 0, 0, 0, {0}};
    lockstep_consumer cs[2] = {{digest_consumer, &d}, {archive_consumer, &l}};
    lockstep_options o = engine_opts(engine, window, NULL);
    CHECK_EQ(lockstep_run_read(fd_read, &fd, 1, cs, 2, &o), 0);
    CHECK_EQ(l.entries, targz_listing.entries);
    CHECK_EQ(l.crc, targz_listing.crc);
    check_digest(&targz, &d, targz.len);
}

/* Writes all of b to fd, in pieces, and returns 0, or 1 on error. */
static int write_all(int fd, const blob *b)
{
    for (size_t done = 0; done < b->len;) {
        size_t piece = b->len - done < 3000 ? b->len - done : 3000;
        ssize_t n = write(fd, b->data + done, piece);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 1;
        done += (size_t)n;
    }
    return 0;
}

/* Waits for pid; returns its exit status, or -1. */
static int wait_exit(pid_t pid)
{
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* From a real pipe, fed by a writer process. */
static void run_pipe(size_t window)
{
    int fds[2];
    CHECK_EQ(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        _exit(write_all(fds[1], &targz));
    }
    CHECK(pid > 0);
    close(fds[1]);
    run_fd(fds[0], window);
    close(fds[0]);
    CHECK_EQ(wait_exit(pid), 0);
}

/* From standard input: a child whose stdin is a file holding the tar.gz
 * reads fd 0 and exits with the number of failed checks. */
static void run_stdin(size_t window)
{
    FILE *f = tmpfile();
    CHECK(f != NULL);
    if (f == NULL)
        return;
    CHECK_EQ(fwrite(targz.data, 1, targz.len, f), targz.len);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        long before = check_failed;
        if (dup2(fileno(f), STDIN_FILENO) < 0 || lseek(STDIN_FILENO, 0, SEEK_SET) != 0)
            _exit(100);
        run_fd(STDIN_FILENO, window);
        _exit(check_failed - before > 99 ? 99 : (int)(check_failed - before));
    }
    CHECK(pid > 0);
    CHECK_EQ(wait_exit(pid), 0);
    fclose(f);
}

int main(int argc, char **argv)
{
    int status;
    if (!engine_test_begin(argc, argv, &engine, &status))
        return status;
    xmlInitParser(); /* once, before consumer threads use libxml2 */
    xml = make_xml(400);
    targz = make_targz(&xml);
    targz_listing = archive_alone(&targz);
    xml_ref = xml_alone(&xml);
    CHECK_EQ(targz_listing.entries, 4);
    CHECK_EQ(xml_ref.elements, 401);
    printf("tar.gz: %zu bytes, %ld entries; XML: %zu bytes\n", targz.len, targz_listing.entries,
           xml.len);

    static const size_t windows[] = {1, 7, 4096, 0};
    for (size_t w = 0; w < sizeof windows / sizeof windows[0]; w++) {
        run_targz(windows[w]);
        run_xml(windows[w]);
        run_failures(windows[w]);
        run_pipe(windows[w]);
        run_stdin(windows[w]);
    }
    free(targz.data);
    free(xml.data);
    xmlCleanupParser();
    char label[64];
    snprintf(label, sizeof label, "bytes_readers[%s]", lockstep_engine_name(engine));
    return CHECK_SUMMARY(label);
}
