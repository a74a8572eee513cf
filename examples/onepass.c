/*
 * onepass.c: reads standard input once and prints its SHA-256 (OpenSSL),
 * its size, its line count and, when it is a tar.gz, the number of entries
 * (libarchive).  Three ordinary readers share one pass over a pipe through
 * lockstep_run_read, with memory bounded by the window: try
 *
 *     tar czf - some/dir | ./onepass
 *
 * The archive reader gives up at once on input that is not a tar.gz; it
 * simply returns, and the others go on.
 */
#include <lockstep.h>

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* The source: standard input, read(2) straight into the window. */
static long read_stdin(void *arg, void *bytes, size_t max)
{
    (void)arg;
    for (;;) {
        ssize_t n = read(STDIN_FILENO, bytes, max);
        if (n >= 0)
            return (long)n;
        if (errno != EINTR)
            return -errno;
    }
}

/* SHA-256 of every byte, straight from the window. */
static int sha256(lockstep_iter *it, void *digest)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL)) {
        EVP_MD_CTX_free(ctx);
        return 1;
    }
    const void *bytes;
    size_t n;
    while ((bytes = lockstep_take(it, SIZE_MAX, &n)) != NULL)
        EVP_DigestUpdate(ctx, bytes, n);
    EVP_DigestFinal_ex(ctx, digest, NULL);
    EVP_MD_CTX_free(ctx);
    return 0;
}

typedef struct {
    unsigned long long size, lines;
} counts;

/* Bytes and newlines. */
static int count(lockstep_iter *it, void *arg)
{
    counts *c = arg;
    const char *bytes;
    size_t n;
    while ((bytes = lockstep_take(it, SIZE_MAX, &n)) != NULL) {
        c->size += n;
        for (const char *p = bytes, *end = bytes + n; (p = memchr(p, '\n', (size_t)(end - p)));
             p++)
            c->lines++;
    }
    return 0;
}

/* libarchive's read callback: the window's own bytes, no copy. */
static la_ssize_t take_block(struct archive *a, void *it, const void **buffer)
{
    (void)a;
    size_t n;
    *buffer = lockstep_take(it, (size_t)1 << 30, &n);
    return (la_ssize_t)n;
}

/* Entries of a tar.gz, or -1 when the input is not one. */
static int entries(lockstep_iter *it, void *arg)
{
    long *n = arg;
    struct archive *a = archive_read_new();
    struct archive_entry *e;
    archive_read_support_filter_gzip(a);
    archive_read_support_format_tar(a);
    *n = -1;
    if (archive_read_open(a, it, NULL, take_block, NULL) == ARCHIVE_OK) {
        long found = 0;
        int rc;
        while ((rc = archive_read_next_header(a, &e)) == ARCHIVE_OK)
            found++;
        if (rc == ARCHIVE_EOF)
            *n = found;
    }
    archive_read_free(a);
    return 0;
}

int main(void)
{
    unsigned char digest[32];
    counts c = {0, 0};
    long n_entries = -1;
    lockstep_consumer consumers[] = {{sha256, digest}, {count, &c}, {entries, &n_entries}};
    int rc = lockstep_run_read(read_stdin, NULL, 1, consumers, 3, NULL);
    if (rc != 0) {
        fprintf(stderr, "onepass: %s\n", rc < 0 && rc > -1000 ? strerror(-rc) : lockstep_strerror(rc));
        return 1;
    }
    printf("sha256  ");
    for (int i = 0; i < 32; i++)
        printf("%02x", digest[i]);
    printf("\nsize    %llu bytes\nlines   %llu\n", c.size, c.lines);
    if (n_entries >= 0)
        printf("tar.gz  %ld entries\n", n_entries);
    else
        printf("tar.gz  no\n");
    return 0;
}
