#include "images/apt_sources.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/buf.h"
#include "runner/base/util.h"

#define MAX_SOURCES 256

void apt_sources_clear(struct apt_sources *s)
{
    for (size_t i = 0; i < s->n; i++) {
        free(s->v[i].uri);
        free(s->v[i].suite);
        free(s->v[i].signed_by);
    }
    free(s->v);
    s->v = NULL;
    s->n = 0;
}

static int add(struct apt_sources *s, const char *uri, size_t ulen, const char *suite, size_t slen,
               const char *signed_by, size_t klen)
{
    if (s->n >= MAX_SOURCES)
        return 0;
    struct apt_source *nv = realloc(s->v, (s->n + 1) * sizeof(*nv));
    if (!nv)
        return -ENOMEM;
    s->v = nv;
    struct apt_source *e = &s->v[s->n];
    e->uri = strndup(uri, ulen);
    e->suite = strndup(suite, slen);
    e->signed_by = signed_by && klen ? strndup(signed_by, klen) : NULL;
    if (!e->uri || !e->suite || (signed_by && klen && !e->signed_by)) {
        free(e->uri);
        free(e->suite);
        free(e->signed_by);
        return -ENOMEM;
    }
    s->n++;
    return 0;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r';
}

/* Next whitespace-separated token of [*p, end). */
static bool next_token(const char **p, const char *end, const char **ret, size_t *ret_len)
{
    const char *s = *p;
    while (s < end && is_space(*s))
        s++;
    if (s >= end)
        return false;
    const char *t = s;
    while (t < end && !is_space(*t))
        t++;
    *ret = s;
    *ret_len = (size_t)(t - s);
    *p = t;
    return true;
}

static int parse_one_line(struct apt_sources *s, const char *line, const char *end)
{
    const char *tok;
    size_t len;
    const char *p = line;
    if (!next_token(&p, end, &tok, &len) || len != 3 || memcmp(tok, "deb", 3) != 0)
        return 0;
    const char *signed_by = NULL;
    size_t klen = 0;
    while (p < end && is_space(*p))
        p++;
    if (p < end && *p == '[') {
        const char *close = memchr(p, ']', (size_t)(end - p));
        if (!close)
            return 0;
        const char *o = p + 1;
        while (next_token(&o, close, &tok, &len)) {
            if (len > 10 && memcmp(tok, "signed-by=", 10) == 0) {
                signed_by = tok + 10;
                klen = len - 10;
            }
        }
        p = close + 1;
    }
    const char *uri, *suite;
    size_t ulen, slen;
    if (!next_token(&p, end, &uri, &ulen) || !next_token(&p, end, &suite, &slen))
        return 0;
    return add(s, uri, ulen, suite, slen, signed_by, klen);
}

struct stanza {
    const char *types, *uris, *suites, *signed_by, *enabled;
    size_t types_len, uris_len, suites_len, signed_by_len, enabled_len;
    bool signed_by_multiline;
};

static bool has_word(const char *v, size_t len, const char *word)
{
    const char *p = v, *end = v + len, *tok;
    size_t tlen;
    while (next_token(&p, end, &tok, &tlen))
        if (tlen == strlen(word) && memcmp(tok, word, tlen) == 0)
            return true;
    return false;
}

static int flush_stanza(struct apt_sources *s, struct stanza *st)
{
    int r = 0;
    if (st->types && st->uris && st->suites && has_word(st->types, st->types_len, "deb") &&
        !(st->enabled && has_word(st->enabled, st->enabled_len, "no"))) {
        const char *pu = st->uris, *eu = st->uris + st->uris_len, *uri;
        size_t ulen;
        while (r == 0 && next_token(&pu, eu, &uri, &ulen)) {
            const char *ps = st->suites, *es = st->suites + st->suites_len, *suite;
            size_t slen;
            while (r == 0 && next_token(&ps, es, &suite, &slen)) {
                /* an embedded key cannot be expressed in one-line format; the
                 * chroot's own keyring then decides */
                bool path_key = st->signed_by && !st->signed_by_multiline;
                r = add(s, uri, ulen, suite, slen, path_key ? st->signed_by : NULL,
                        path_key ? st->signed_by_len : 0);
            }
        }
    }
    *st = (struct stanza){0};
    return r;
}

static int parse_deb822(struct apt_sources *s, const char *text)
{
    struct stanza st = {0};
    const char **last_val = NULL;
    size_t *last_len = NULL;
    for (const char *line = text; *line;) {
        const char *nl = strchr(line, '\n');
        const char *end = nl ? nl : line + strlen(line);
        const char *next = nl ? nl + 1 : end;
        const char *p = line;
        while (p < end && is_space(*p))
            p++;
        if (p == end) {
            int r = flush_stanza(s, &st);
            if (r < 0)
                return r;
            last_val = NULL;
        } else if (*line == '#') {
            /* comment */
        } else if (is_space(*line)) {
            /* continuation: only a multi-line Signed-By (embedded key) matters */
            if (last_val && last_val == &st.signed_by)
                st.signed_by_multiline = true;
        } else {
            const char *colon = memchr(line, ':', (size_t)(end - line));
            last_val = NULL;
            if (colon) {
                size_t klen = (size_t)(colon - line);
                const char *v = colon + 1;
                while (v < end && is_space(*v))
                    v++;
                const char *ve = end;
                while (ve > v && is_space(ve[-1]))
                    ve--;
                static const struct {
                    const char *key;
                    size_t off_val, off_len;
                } fields[] = {
                        {"Types", offsetof(struct stanza, types),
                         offsetof(struct stanza, types_len)},
                        {"URIs", offsetof(struct stanza, uris), offsetof(struct stanza, uris_len)},
                        {"Suites", offsetof(struct stanza, suites),
                         offsetof(struct stanza, suites_len)},
                        {"Signed-By", offsetof(struct stanza, signed_by),
                         offsetof(struct stanza, signed_by_len)},
                        {"Enabled", offsetof(struct stanza, enabled),
                         offsetof(struct stanza, enabled_len)},
                };
                for (size_t i = 0; i < ARRAY_SIZE(fields); i++) {
                    if (strlen(fields[i].key) == klen &&
                        strncasecmp(line, fields[i].key, klen) == 0) {
                        last_val = (const char **)((char *)&st + fields[i].off_val);
                        last_len = (size_t *)((char *)&st + fields[i].off_len);
                        *last_val = v;
                        *last_len = (size_t)(ve - v);
                    }
                }
            }
        }
        line = next;
    }
    (void)last_len;
    return flush_stanza(s, &st);
}

int apt_sources_parse(struct apt_sources *s, const char *text, bool deb822)
{
    if (deb822)
        return parse_deb822(s, text);
    for (const char *line = text; *line;) {
        const char *nl = strchr(line, '\n');
        const char *end = nl ? nl : line + strlen(line);
        const char *hash = memchr(line, '#', (size_t)(end - line));
        int r = parse_one_line(s, line, hash ? hash : end);
        if (r < 0)
            return r;
        line = nl ? nl + 1 : end;
    }
    return 0;
}

static int read_one(struct apt_sources *s, const char *path, bool deb822, struct al_error **err)
{
    _cleanup_free_ char *text = NULL;
    _cleanup_error_ struct al_error *rerr = NULL;
    int r = al_read_file(path, APT_SOURCES_MAX_BYTES, &text, NULL, &rerr);
    if (r == -ENOENT)
        return 0;
    if (r < 0)
        return al_error_move(err, &rerr);
    if (apt_sources_parse(s, text, deb822) < 0)
        return al_error_set(err, ENOMEM, "parsing %s", path);
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && streq(s + n - k, suffix);
}

int apt_sources_read_host(struct apt_sources *s, const char *root, struct al_error **err)
{
    _cleanup_free_ char *etc = al_path_join(root, "etc/apt");
    _cleanup_free_ char *list = etc ? al_path_join(etc, "sources.list") : NULL;
    _cleanup_free_ char *dir = etc ? al_path_join(etc, "sources.list.d") : NULL;
    if (!list || !dir)
        return al_error_set(err, ENOMEM, "reading apt sources");
    int r = read_one(s, list, false, err);
    if (r < 0)
        return r;
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    _cleanup_strv_ char **names = calloc(1, sizeof(char *));
    size_t n = 0;
    struct dirent *de;
    while (names && (de = readdir(d))) {
        if (de->d_name[0] == '.' ||
            !(ends_with(de->d_name, ".list") || ends_with(de->d_name, ".sources")))
            continue;
        char **nv = realloc(names, (n + 2) * sizeof(char *));
        if (!nv)
            break;
        names = nv;
        names[n] = strdup(de->d_name);
        if (!names[n])
            break;
        names[++n] = NULL;
    }
    closedir(d);
    if (!names)
        return al_error_set(err, ENOMEM, "reading apt sources");
    /* apt reads them in alphabetical order */
    qsort(names, n, sizeof(char *), cmp_str);
    for (size_t i = 0; i < n; i++) {
        _cleanup_free_ char *path = al_path_join(dir, names[i]);
        if (!path)
            return al_error_set(err, ENOMEM, "reading apt sources");
        r = read_one(s, path, ends_with(names[i], ".sources"), err);
        if (r < 0)
            return r;
    }
    return 0;
}

static bool suite_matches(const char *suite, const char *want)
{
    size_t n = strlen(want);
    return strncmp(suite, want, n) == 0 && (suite[n] == '\0' || suite[n] == '-' || suite[n] == '/');
}

int apt_sources_render(const struct apt_sources *s, const char *suite, char *const *components,
                       char **ret_text)
{
    _cleanup_buf_ struct al_buf out = AL_BUF_INIT;
    _cleanup_buf_ struct al_buf comps = AL_BUF_INIT;
    for (char *const *c = components; c && *c; c++)
        if (al_buf_printf(&comps, " %s", *c) < 0)
            return -ENOMEM;
    if (!comps.len && al_buf_puts(&comps, " main") < 0)
        return -ENOMEM;
    size_t matched = 0;
    for (size_t i = 0; i < s->n; i++) {
        const struct apt_source *e = &s->v[i];
        if (!suite_matches(e->suite, suite))
            continue;
        bool dup = false;
        for (size_t k = 0; k < i && !dup; k++)
            dup = streq(s->v[k].uri, e->uri) && streq(s->v[k].suite, e->suite);
        if (dup)
            continue;
        int r = e->signed_by ? al_buf_printf(&out, "deb [signed-by=%s] %s %s%s\n", e->signed_by,
                                             e->uri, e->suite, comps.data)
                             : al_buf_printf(&out, "deb %s %s%s\n", e->uri, e->suite, comps.data);
        if (r < 0)
            return -ENOMEM;
        matched++;
    }
    if (matched == 0)
        return -ENOENT;
    char *text = al_buf_steal(&out);
    if (!text)
        return -ENOMEM;
    *ret_text = text;
    return 0;
}
