/* The host's apt sources, reused for image builds so an image comes from the
 * same mirrors (and proxies, and keys) the host already trusts; a mirror host
 * is never hard-coded.
 *
 * Reads /etc/apt/sources.list, sources.list.d/ *.list (one-line format) and
 * sources.list.d/ *.sources (deb822), keeps the binary ("deb") entries, and
 * renders the ones for a given suite family (bookworm, bookworm-updates,
 * bookworm-security, ...) as one-line entries with the recipe's components.
 */
#ifndef AL_IMAGES_APT_SOURCES_H
#define AL_IMAGES_APT_SOURCES_H

#include <stdbool.h>
#include <stddef.h>

#include "runner/base/error.h"

#define APT_SOURCES_MAX_BYTES (1u << 20)

struct apt_source {
    char *uri;
    char *suite;
    char *signed_by; /* a keyring path, or NULL */
};

struct apt_sources {
    struct apt_source *v;
    size_t n;
};

void apt_sources_clear(struct apt_sources *s);

/* Adds the "deb" entries of one file's text. deb822 selects the format.
 * Malformed lines and stanzas are skipped (apt reports them itself); only
 * allocation failures are errors. */
int apt_sources_parse(struct apt_sources *s, const char *text, bool deb822);

/* Reads the sources under root (normally "/"): etc/apt/sources.list and
 * etc/apt/sources.list.d/. Missing files are fine. */
int apt_sources_read_host(struct apt_sources *s, const char *root, struct al_error **err);

/* One-line entries ("deb [signed-by=K] URI SUITE COMPONENTS\n") for every
 * source whose suite is `suite` or starts with "suite-", in input order,
 * duplicates dropped. -ENOENT when none matches. */
int apt_sources_render(const struct apt_sources *s, const char *suite, char *const *components,
                       char **ret_text);

#endif
