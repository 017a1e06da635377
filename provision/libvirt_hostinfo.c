/* The libvirt backend's host_info op (`agentlab host ls`): the connection's
 * state as the backend keeps it, and for a remote host the golden images
 * its storage pool holds. Those are read on the thread pool (a listing and
 * one tiny marker download per image: round trips to the host) at most
 * every HOSTINFO_REFRESH_MS, when someone asks; a call reports what the
 * last read found. The read holds its own references (the connection, a
 * copy of the pool name) in a cache the backend and the read share, so a
 * backend closed meanwhile is no concern of the read's.
 */
#include "provision/libvirt_priv.h"
#include "provision/libvirt_upload.h"

#define HOSTINFO_REFRESH_MS 30000u

struct lv_hostinfo {
    int refs;      /* the backend's, and a read's in flight */
    bool orphaned; /* the backend is gone */
    bool reading;
    uint64_t read_at; /* monotonic ms the last read ended; 0 = never */
    struct image_vol_entry *images;
    size_t n_images;
    char error[200];
    /* the read in flight */
    virConnectPtr conn;
    char *pool;
    struct image_vol_entry *got;
    size_t n_got;
};

static void hostinfo_unref(struct lv_hostinfo *h)
{
    if (--h->refs > 0)
        return;
    image_vol_entries_free(h->images, h->n_images);
    free(h);
}

void lv_hostinfo_release(struct lv_backend *lb)
{
    if (!lb->hostinfo)
        return;
    lb->hostinfo->orphaned = true;
    hostinfo_unref(TAKE_PTR(lb->hostinfo));
}

static int read_work(void *data, struct al_error **err)
{
    struct lv_hostinfo *h = data;
    return image_vol_list(h->conn, h->pool, &h->got, &h->n_got, err);
}

static void read_done(void *data, int result, struct al_error *err)
{
    struct lv_hostinfo *h = data;
    virConnectClose(h->conn); /* our reference only */
    h->conn = NULL;
    free(h->pool);
    h->pool = NULL;
    h->reading = false;
    h->read_at = al_now_mono_ms();
    if (result < 0) {
        snprintf(h->error, sizeof(h->error), "%.190s",
                 err ? al_error_message(err) : strerror(-result));
    } else {
        image_vol_entries_free(h->images, h->n_images);
        h->images = TAKE_PTR(h->got);
        h->n_images = h->n_got;
        h->error[0] = '\0';
    }
    image_vol_entries_free(h->got, h->n_got);
    h->got = NULL;
    h->n_got = 0;
    al_error_free(err);
    hostinfo_unref(h);
}

/* Starts a read of the pool's images when the last one is old. */
static void maybe_read(struct lv_backend *lb, struct lv_hostinfo *h)
{
    uint64_t now = al_now_mono_ms();
    if (h->reading || !lb->conn || lb->conn_dead ||
        (h->read_at && now - h->read_at < HOSTINFO_REFRESH_MS))
        return;
    if (!(h->pool = strdup(lb->pool_name)))
        return;
    h->conn = lb->conn;
    virConnectRef(h->conn);
    h->reading = true;
    h->refs++;
    int r = al_work_queue(lb->b->env.loop, read_work, read_done, h, NULL);
    if (r < 0) {
        h->refs--;
        h->reading = false;
        virConnectClose(h->conn);
        h->conn = NULL;
        free(h->pool);
        h->pool = NULL;
        snprintf(h->error, sizeof(h->error), "queueing the image listing: %s", strerror(-r));
    }
}

/* Copies the cached listing into ret. */
static void report_images(const struct lv_hostinfo *h, struct backend_host_info *ret)
{
    ret->images_listed = true;
    ret->images_age_ms = h->read_at ? (int64_t)(al_now_mono_ms() - h->read_at) : -1;
    snprintf(ret->images_error, sizeof(ret->images_error), "%s", h->error);
    if (!h->n_images)
        return;
    struct backend_host_image *v = calloc(h->n_images, sizeof(*v));
    if (!v) {
        snprintf(ret->images_error, sizeof(ret->images_error), "out of memory");
        return;
    }
    size_t n = 0;
    for (size_t i = 0; i < h->n_images; i++) {
        const struct image_vol_entry *e = &h->images[i];
        v[n] = (struct backend_host_image){.image = strdup(e->image),
                                           .role = strdup(image_vol_role_name(e->role)),
                                           .volume = strdup(e->volume),
                                           .size = e->size};
        memcpy(v[n].sha256, e->sha256, sizeof(v[n].sha256));
        if (!v[n].image || !v[n].role || !v[n].volume) {
            free(v[n].image);
            free(v[n].role);
            free(v[n].volume);
            continue;
        }
        n++;
    }
    ret->images = v;
    ret->n_images = n;
}

void lv_host_info(struct backend *b, struct backend_host_info *ret)
{
    struct lv_backend *lb = b->priv;
    libvirt_uri_redact(b->cfg->libvirt.uri, ret->uri, sizeof(ret->uri));
    snprintf(ret->transport, sizeof(ret->transport), "%s", lb->remote ? "remote" : "local");
    ret->reachable = lb->conn && !lb->conn_dead;
    if (!ret->reachable)
        snprintf(ret->error, sizeof(ret->error), "%s",
                 lb->conn_error[0] ? lb->conn_error : "not connected");
    ret->images_age_ms = -1;
    /* a local host's domains read the daemon's image files: the catalogue
     * is what it holds */
    if (!lb->remote)
        return;
    if (!lb->hostinfo) {
        lb->hostinfo = calloc(1, sizeof(*lb->hostinfo));
        if (!lb->hostinfo) {
            snprintf(ret->images_error, sizeof(ret->images_error), "out of memory");
            return;
        }
        lb->hostinfo->refs = 1;
    }
    maybe_read(lb, lb->hostinfo);
    report_images(lb->hostinfo, ret);
}
