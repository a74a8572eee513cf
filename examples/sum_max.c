/*
 * sum_max.c: the original question, answered in C.  One iterator over
 * 1..999 that can be read only once, two ordinary consumers (sum and max),
 * one pass, a window of memory.  Build it against an installed lockstep with
 *   cc sum_max.c $(pkg-config --cflags --libs lockstep)
 */
#include <lockstep.h>

#include <stdint.h>
#include <stdio.h>

/* The source: hands out 1, 2, ..., 999, then reports the end. */
static int count_to_999(void *arg, void *item)
{
    int64_t *next = arg;
    if (*next > 999)
        return 0;
    *(int64_t *)item = (*next)++;
    return 1;
}

/* Two unmodified consumers: each is a plain loop over lockstep_next. */
static int sum(lockstep_iter *it, void *result)
{
    const int64_t *x;
    while ((x = lockstep_next(it)) != NULL)
        *(int64_t *)result += *x;
    return 0;
}

static int max(lockstep_iter *it, void *result)
{
    const int64_t *x;
    while ((x = lockstep_next(it)) != NULL)
        if (*x > *(int64_t *)result)
            *(int64_t *)result = *x;
    return 0;
}

int main(void)
{
    int64_t next = 1, total = 0, largest = INT64_MIN;
    lockstep_consumer consumers[] = {{sum, &total}, {max, &largest}};
    int rc = lockstep_run(count_to_999, &next, sizeof(int64_t), consumers, 2, NULL);
    if (rc != 0) {
        fprintf(stderr, "lockstep_run: %s\n", lockstep_strerror(rc));
        return 1;
    }
    printf("sum(1..999) = %lld, max(1..999) = %lld, in one pass over one iterator\n",
           (long long)total, (long long)largest);
    return 0;
}
