#include "runner/cli/table.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/util.h"

struct table {
    size_t ncols;
    char **cells; /* rows * ncols, the header row first */
    size_t rows;
    size_t cap;
};

static char *cell_dup(const char *s)
{
    if (!s)
        s = "";
    size_t len = strlen(s);
    if (len <= TABLE_MAX_CELL)
        return strdup(s);
    char *out = malloc(TABLE_MAX_CELL + 1);
    if (!out)
        return NULL;
    memcpy(out, s, TABLE_MAX_CELL - 3);
    memcpy(out + TABLE_MAX_CELL - 3, "...", 4);
    return out;
}

int table_add(struct table *t, const char *const *cells)
{
    if (t->rows == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 16;
        char **c = realloc(t->cells, cap * t->ncols * sizeof(char *));
        if (!c)
            return -ENOMEM;
        t->cells = c;
        t->cap = cap;
    }
    char **row = t->cells + t->rows * t->ncols;
    for (size_t i = 0; i < t->ncols; i++) {
        row[i] = cell_dup(cells[i]);
        if (!row[i]) {
            for (size_t k = 0; k < i; k++)
                free(row[k]);
            return -ENOMEM;
        }
        /* one line per row: control characters become spaces */
        for (char *p = row[i]; *p; p++) {
            if ((unsigned char)*p < 0x20)
                *p = ' ';
        }
    }
    t->rows++;
    return 0;
}

struct table *table_new(size_t ncols, const char *const *headers)
{
    if (ncols == 0 || ncols > TABLE_MAX_COLS)
        return NULL;
    struct table *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->ncols = ncols;
    if (table_add(t, headers) < 0) {
        free(t);
        return NULL;
    }
    return t;
}

void table_print(const struct table *t, FILE *out)
{
    size_t w[TABLE_MAX_COLS] = {0};
    for (size_t r = 0; r < t->rows; r++) {
        for (size_t c = 0; c < t->ncols; c++) {
            size_t len = strlen(t->cells[r * t->ncols + c]);
            if (len > w[c])
                w[c] = len;
        }
    }
    for (size_t r = 0; r < t->rows; r++) {
        for (size_t c = 0; c < t->ncols; c++) {
            const char *s = t->cells[r * t->ncols + c];
            if (c + 1 == t->ncols)
                fprintf(out, "%s\n", s);
            else
                fprintf(out, "%-*s  ", (int)w[c], s);
        }
    }
}

void table_free(struct table *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->rows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    free(t);
}

void table_age(int64_t ms, char *buf, size_t size)
{
    if (ms <= 0) {
        snprintf(buf, size, "-");
        return;
    }
    int64_t s = (al_now_wall_ms() - ms) / 1000;
    if (s < 0)
        s = 0;
    if (s < 120)
        snprintf(buf, size, "%llds", (long long)s);
    else if (s < 7200)
        snprintf(buf, size, "%lldm", (long long)(s / 60));
    else if (s < 2 * 86400)
        snprintf(buf, size, "%lldh", (long long)(s / 3600));
    else
        snprintf(buf, size, "%lldd", (long long)(s / 86400));
}

void table_size(uint64_t bytes, char *buf, size_t size)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)bytes;
    size_t u = 0;
    while (v >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, size, "%llu B", (unsigned long long)bytes);
    else
        snprintf(buf, size, "%.1f %s", v, units[u]);
}
