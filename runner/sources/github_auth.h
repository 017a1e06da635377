/* Credentials of the GitHub source: a fine-grained personal access token
 * read from a file, or a GitHub App.
 *
 * App auth: a JWT (RS256 over the app's PEM private key, iat 60 s in the
 * past for clock drift, exp 9 minutes ahead, iss the app id or client id)
 * is exchanged for an installation token with
 *   GET  /repos/{owner}/{repo}/installation (or /orgs/{org}/installation)
 *        once, when installation_id is not configured, and
 *   POST /app/installations/{id}/access_tokens
 * The token (valid one hour) is used until 5 minutes before it expires,
 * then fetched again; a 401 from the API drops it at once. Neither endpoint
 * is part of actions-runners-openapi.json: they are GitHub's App API.
 *
 * Every credential (the file token, the installation token, the JWT) is
 * registered with the log redactor while it lives and wiped when freed.
 * Secret files must not be readable by others. Loop thread only.
 */
#ifndef AL_GITHUB_AUTH_H
#define AL_GITHUB_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runner/base/error.h"
#include "runner/loop/curl_uv.h"

/* Seconds before expiry at which an installation token is replaced. */
#define GITHUB_TOKEN_MARGIN_S 300
/* Lifetime of an App JWT (GitHub accepts at most 10 minutes). */
#define GITHUB_JWT_LIFETIME_S 540

struct github_auth;

struct github_auth_params {
    struct al_curl *curl;
    const char *api_base;   /* e.g. https://api.github.com, no trailing slash */
    const char *token_file; /* a fine-grained token; used when app_id is empty */
    const char *app_id;     /* App id or client id; NULL or "" = token_file */
    const char *app_key_file;
    const char *installation_id; /* NULL or "" = looked up */
    const char *repo;            /* "owner/name", or NULL */
    const char *org;             /* or NULL */
    /* Runs on the loop after each refresh that github_auth_refresh()
     * started: result 0 (a token is ready) or negative with a message. */
    void (*on_refreshed)(int result, const char *message, void *data);
    void *data;
};

/* Reads the token file or the App key now, so bad settings fail the start.
 * Errors name the file and the problem (never its content). */
int github_auth_new(const struct github_auth_params *p, struct github_auth **ret,
                    struct al_error **err);

/* The "Authorization: Bearer ..." header line for an API call now, or NULL
 * when an installation token must be fetched first (github_auth_refresh).
 * Valid until the next refresh or invalidate. */
const char *github_auth_header(struct github_auth *a);

bool github_auth_is_app(const struct github_auth *a);

/* Starts fetching an installation token. Returns 0 (on_refreshed will
 * run), -EALREADY when a fetch is under way (its on_refreshed will run), or
 * -ENOTSUP for token-file auth. */
int github_auth_refresh(struct github_auth *a);

/* Forgets the installation token (the API answered 401 with it). */
void github_auth_invalidate(struct github_auth *a);

/* Cancels a fetch in flight (on_refreshed does not run), wipes every
 * credential and frees. Accepts NULL. */
void github_auth_free(struct github_auth *a);

/* The App JWT for now_s (seconds since the epoch), signed with the PEM
 * private key pem[0..len). Exposed for tests. */
int github_app_jwt(const char *pem, size_t len, const char *iss, int64_t now_s, char **ret,
                   struct al_error **err);

/* Reads a one-line secret (token, webhook secret) from a file that others
 * may not read: surrounding whitespace dropped, at least min bytes, no
 * spaces or control characters inside. what names it in messages. The
 * caller wipes and frees *ret. */
int github_read_secret(const char *path, const char *what, size_t min, char **ret,
                       struct al_error **err);

#endif
