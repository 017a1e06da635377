#include "runner/base/xml.h"
#include <stdbool.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int al_xml_escape_append(struct al_buf *b, const char *s)
{
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        const char *rep = NULL;
        switch (c) {
        case '&':
            rep = "&amp;";
            break;
        case '<':
            rep = "&lt;";
            break;
        case '>':
            rep = "&gt;";
            break;
        case '"':
            rep = "&quot;";
            break;
        case '\'':
            rep = "&apos;";
            break;
        default:
            if (c < 0x20 && c != '\t' && c != '\n')
                return -EINVAL;
        }
        int r = rep ? al_buf_puts(b, rep) : al_buf_append(b, p, 1);
        if (r < 0)
            return r;
    }
    return 0;
}

static void decode_entities(char *s)
{
    static const struct {
        const char *ent;
        char c;
    } ents[] = {{"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};
    char *o = s;
    for (char *p = s; *p;) {
        bool done = false;
        if (*p == '&') {
            for (size_t i = 0; i < ARRAY_SIZE(ents); i++) {
                size_t n = strlen(ents[i].ent);
                if (strncmp(p, ents[i].ent, n) == 0) {
                    *o++ = ents[i].c;
                    p += n;
                    done = true;
                    break;
                }
            }
        }
        if (!done)
            *o++ = *p++;
    }
    *o = '\0';
}

char *al_xml_attr(const char *xml, const char *name)
{
    if (!xml)
        return NULL;
    size_t n = strlen(name);
    const char *end = strchr(xml, '>');
    for (const char *p = xml; (p = strstr(p, name)) && (!end || p < end); p += n) {
        /* must be a whole attribute name: preceded by space, followed by =" */
        if (p == xml || (p[-1] != ' ' && p[-1] != '\t' && p[-1] != '\n'))
            continue;
        const char *q = p + n;
        if (q[0] != '=' || (q[1] != '"' && q[1] != '\''))
            continue;
        char quote = q[1];
        const char *v = q + 2;
        const char *close = strchr(v, quote);
        if (!close)
            return NULL;
        char *out = strndup(v, (size_t)(close - v));
        if (out)
            decode_entities(out);
        return out;
    }
    return NULL;
}

char *al_xml_text(const char *xml, const char *tag)
{
    char open[64], close[64];
    snprintf(open, sizeof(open), "<%s>", tag);
    snprintf(close, sizeof(close), "</%s>", tag);
    const char *a = strstr(xml, open);
    const char *b = a ? strstr(a, close) : NULL;
    return b ? strndup(a + strlen(open), (size_t)(b - a - strlen(open))) : NULL;
}
