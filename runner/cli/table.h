/* Human-readable tables for the CLI's listings: columns padded to their
 * widest cell, long cells shortened with "...", one header line. */
#ifndef AL_CLI_TABLE_H
#define AL_CLI_TABLE_H

#include <stdint.h>
#include <stdio.h>

#define TABLE_MAX_COLS 12
#define TABLE_MAX_CELL 64

struct table;

/* headers: ncols column titles. NULL on ENOMEM. */
struct table *table_new(size_t ncols, const char *const *headers);
/* Adds a row of ncols cells (NULL = empty); copies them. 0 or -ENOMEM. */
int table_add(struct table *t, const char *const *cells);
void table_print(const struct table *t, FILE *out);
void table_free(struct table *t);

/* "12s", "5m", "3h", "2d": how long ago ms (since the epoch) was. */
void table_age(int64_t ms, char *buf, size_t size);

/* "512 B", "1.5 KiB", "3.0 GiB" */
void table_size(uint64_t bytes, char *buf, size_t size);

#endif
