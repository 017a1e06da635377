/* `agentlab image ...`: build, list, inspect and remove golden images. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/engine/config.h"
#include "runner/cli/cli.h"
#include "images/builder.h"
#include "images/catalog.h"
#include "images/import.h"

#define DEFAULT_RECIPE "debian-12"

static const char usage_text[] =
        "Usage: agentlab image COMMAND [OPTIONS]\n"
        "\n"
        "Golden images: the sealed qcow2 disks (with kernel and initrd) every job\n"
        "clones. They live in <state_dir>/images/<name>/.\n"
        "\n"
        "Commands:\n"
        "  build [RECIPE]   build an image from a recipe (default: " DEFAULT_RECIPE ")\n"
        "  list             list the images\n"
        "  inspect NAME     print an image's manifest as JSON\n"
        "  rm NAME          remove an image (refused while a job uses it)\n"
        "  import NAME      add a kernel, initrd and disk built elsewhere\n"
        "\n"
        "Common options:\n"
        "  -c, --config FILE   configuration file (state_dir comes from it;\n"
        "                      AGENTLAB_STATE_DIR overrides)\n"
        "\n"
        "Run 'agentlab image COMMAND --help' for a command's options.\n";

static const char build_help[] =
        "Usage: agentlab image build [RECIPE] [--force] [--recipes DIR] [--guest-helper PATH]\n"
        "\n"
        "Builds the image RECIPE (default: " DEFAULT_RECIPE "): mmdebstrap rootfs from the host's\n"
        "apt sources, a qcow2 disk written with libguestfs, sealed for cloning, with\n"
        "kernel and initrd beside it. An image whose recipe, guest helper and apt\n"
        "sources are unchanged is reported up to date and not rebuilt.\n"
        "\n"
        "Options:\n"
        "  --force              rebuild even when the image is up to date\n"
        "  --recipes DIR        look for recipes in DIR first\n"
        "                       (then $AGENTLAB_RECIPES, /etc/agentlab/recipes, the\n"
        "                       installed recipes)\n"
        "  --guest-helper PATH  the agentlab-guest binary to install (default:\n"
        "                       $AGENTLAB_GUEST_HELPER, next to agentlab, libexec)\n"
        "  -c, --config FILE    configuration file\n";

static const char list_help[] = "Usage: agentlab image list [--json]\n"
                                "\n"
                                "Lists the complete images; --json prints their manifests.\n";

static const char inspect_help[] = "Usage: agentlab image inspect NAME\n"
                                   "\n"
                                   "Prints the image's manifest (with absolute paths) as JSON.\n";

static const char rm_help[] =
        "Usage: agentlab image rm NAME [--force]\n"
        "\n"
        "Removes an image. Refused while a process holds it (a .inuse.<pid> file in\n"
        "the image directory) or a libvirt domain has a disk, kernel or backing file\n"
        "in it. --force skips only the libvirt check (for hosts where libvirtd is\n"
        "not reachable).\n";

static bool is_help(const char *a)
{
    return streq(a, "--help") || streq(a, "-h");
}

struct common {
    const char *config_path;
    struct config *cfg;
};

static int load_config(struct common *c)
{
    _cleanup_error_ struct al_error *err = NULL;
    if (config_load(c->config_path, &c->cfg, &err) < 0) {
        fprintf(stderr, "agentlab: %s\n", al_error_message(err));
        return -1;
    }
    return 0;
}

static const struct backend_settings *libvirt_backend(const struct config *cfg)
{
    for (size_t i = 0; i < cfg->n_backends; i++)
        if (cfg->backends[i].type == BACKEND_LIBVIRT)
            return &cfg->backends[i];
    return NULL;
}

static void format_duration(uint64_t ms, char *buf, size_t size)
{
    if (ms < 60000)
        snprintf(buf, size, "%.1f s", (double)ms / 1000.0);
    else
        snprintf(buf, size, "%" PRIu64 ":%02" PRIu64, ms / 60000, (ms / 1000) % 60);
}

static void format_size(uint64_t b, char *buf, size_t size)
{
    if (b >= (1ull << 30))
        snprintf(buf, size, "%.1fG", (double)b / (1ull << 30));
    else
        snprintf(buf, size, "%.0fM", (double)b / (1ull << 20));
}

/* ---- progress display ---- */

struct progress {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    pthread_t ticker;
    bool ticker_running;
    bool stop;
    bool tty;
    bool live; /* a live line is on screen */
    const char *name;
    int phase; /* -1 = none */
    uint64_t phase_start;
    char detail[200];
};

static int term_width(void)
{
    struct winsize ws;
    if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 20)
        return ws.ws_col;
    return 80;
}

/* caller holds the lock */
static void draw_live(struct progress *p)
{
    if (!p->tty || p->phase < 0)
        return;
    char line[512];
    char el[32];
    format_duration(al_now_mono_ms() - p->phase_start, el, sizeof(el));
    int n = snprintf(line, sizeof(line), "[%d/%d] %-9s %7s  %s", p->phase + 1, IMAGE_PHASE_COUNT,
                     image_phase_to_string(p->phase), el, p->detail);
    int w = term_width() - 1;
    if (n > w)
        n = w;
    if (n < 0)
        n = 0;
    fprintf(stderr, "\r\033[K%.*s", n, line);
    fflush(stderr);
    p->live = true;
}

static void clear_live(struct progress *p)
{
    if (p->tty && p->live) {
        fputs("\r\033[K", stderr);
        p->live = false;
    }
}

static void *ticker_main(void *data)
{
    struct progress *p = data;
    pthread_mutex_lock(&p->lock);
    while (!p->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 500 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&p->cond, &p->lock, &ts);
        if (!p->stop)
            draw_live(p);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

static void on_progress(void *data, enum image_build_event ev, enum image_phase phase,
                        uint64_t elapsed_ms, const char *detail)
{
    struct progress *p = data;
    char el[32];
    pthread_mutex_lock(&p->lock);
    switch (ev) {
    case IMAGE_BUILD_PHASE_START:
        p->phase = (int)phase;
        p->phase_start = al_now_mono_ms();
        p->detail[0] = '\0';
        if (p->tty)
            draw_live(p);
        else
            fprintf(stderr, "image %s: %s...\n", p->name, image_phase_to_string(phase));
        break;
    case IMAGE_BUILD_PHASE_DETAIL:
        snprintf(p->detail, sizeof(p->detail), "%s", detail ? detail : "");
        if (p->tty)
            draw_live(p);
        else if (detail)
            fprintf(stderr, "image %s: %s: %s\n", p->name, image_phase_to_string(phase), detail);
        break;
    case IMAGE_BUILD_PHASE_DONE:
        format_duration(elapsed_ms, el, sizeof(el));
        clear_live(p);
        if (p->tty)
            fprintf(stderr, "[%d/%d] %-9s done in %s\n", (int)phase + 1, IMAGE_PHASE_COUNT,
                    image_phase_to_string(phase), el);
        else
            fprintf(stderr, "image %s: %s done in %s\n", p->name, image_phase_to_string(phase), el);
        p->phase = -1;
        break;
    case IMAGE_BUILD_NOTICE:
        clear_live(p);
        fprintf(stderr, "agentlab: warning: %s\n", detail ? detail : "");
        draw_live(p);
        break;
    }
    fflush(stderr);
    pthread_mutex_unlock(&p->lock);
}

static void progress_stop(struct progress *p)
{
    pthread_mutex_lock(&p->lock);
    p->stop = true;
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->lock);
    if (p->ticker_running)
        pthread_join(p->ticker, NULL);
    p->ticker_running = false;
    clear_live(p);
}

/* ---- build ---- */

static struct image_cancel build_cancel;

static void on_signal(int sig)
{
    (void)sig;
    image_build_cancel_request(&build_cancel);
}

static int cmd_build(int argc, char **argv)
{
    struct common c = {0};
    const char *recipe = NULL, *recipes_dir = NULL, *helper = NULL;
    bool force = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (is_help(a)) {
            fputs(build_help, stdout);
            return 0;
        } else if (streq(a, "--force")) {
            force = true;
        } else if (streq(a, "--recipes") && i + 1 < argc) {
            recipes_dir = argv[++i];
        } else if (streq(a, "--guest-helper") && i + 1 < argc) {
            helper = argv[++i];
        } else if ((streq(a, "--config") || streq(a, "-c")) && i + 1 < argc) {
            c.config_path = argv[++i];
        } else if (a[0] != '-' && !recipe) {
            recipe = a;
        } else {
            fprintf(stderr, "agentlab image build: unexpected argument \"%s\"\n%s", a, build_help);
            return 2;
        }
    }
    if (load_config(&c) < 0)
        return 1;
    _cleanup_config_ struct config *cfg = c.cfg;
    if (!recipe)
        recipe = cfg->agent.image && cfg->agent.image[0] ? cfg->agent.image : DEFAULT_RECIPE;
    const struct backend_settings *be = libvirt_backend(cfg);

    struct progress p = {
            .lock = PTHREAD_MUTEX_INITIALIZER,
            .cond = PTHREAD_COND_INITIALIZER,
            .tty = isatty(STDERR_FILENO) == 1,
            .name = recipe,
            .phase = -1,
    };
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (p.tty && pthread_create(&p.ticker, NULL, ticker_main, &p) == 0)
        p.ticker_running = true;

    struct image_build_opts o = {
            .state_dir = cfg->agent.state_dir,
            .recipe = recipe,
            .recipes_dir = recipes_dir,
            .guest_helper = helper,
            .force = force,
            .accel_mode = be ? be->libvirt.accel : ACCEL_AUTO,
            .accel_cache_dir = cfg->agent.run_dir,
            .libvirt_uri = be ? be->libvirt.uri : NULL,
            .progress = on_progress,
            .progress_data = &p,
            .cancel = &build_cancel,
    };
    struct image_build_result res = {0};
    _cleanup_error_ struct al_error *err = NULL;
    uint64_t t0 = al_now_mono_ms();
    int r = image_build(&o, &res, &err);
    progress_stop(&p);
    if (r < 0) {
        if (r == -ECANCELED || build_cancel.requested) {
            fprintf(stderr, "agentlab: image build %s interrupted; nothing was changed\n", recipe);
            image_build_result_clear(&res);
            return 130;
        }
        fprintf(stderr, "agentlab: image build %s: %s\n", recipe, al_error_message(err));
        image_build_result_clear(&res);
        return 1;
    }
    char created[32];
    al_format_time_ms(res.info->created_ms, created, sizeof(created));
    if (res.up_to_date) {
        printf("image %s is up to date (built %s; --force rebuilds it)\n", recipe, created);
    } else {
        char total[32], ph[IMAGE_PHASE_COUNT][32], size[32];
        format_duration(al_now_mono_ms() - t0, total, sizeof(total));
        for (int i = 0; i < IMAGE_PHASE_COUNT; i++)
            format_duration(res.info->build_ms[i], ph[i], sizeof(ph[i]));
        format_size(res.info->size, size, sizeof(size));
        printf("image %s built in %s (bootstrap %s, disk %s, seal %s, checksum %s): %s, %s, "
               "%zu packages\n",
               recipe, total, ph[0], ph[1], ph[2], ph[3], res.info->dir, size,
               res.info->n_packages);
    }
    image_build_result_clear(&res);
    return 0;
}

/* ---- list, inspect, rm ---- */

static int cmd_list(int argc, char **argv)
{
    struct common c = {0};
    bool json = false;
    for (int i = 1; i < argc; i++) {
        if (is_help(argv[i])) {
            fputs(list_help, stdout);
            return 0;
        } else if (streq(argv[i], "--json")) {
            json = true;
        } else if ((streq(argv[i], "--config") || streq(argv[i], "-c")) && i + 1 < argc) {
            c.config_path = argv[++i];
        } else {
            fprintf(stderr, "agentlab image list: unexpected argument \"%s\"\n%s", argv[i],
                    list_help);
            return 2;
        }
    }
    if (load_config(&c) < 0)
        return 1;
    _cleanup_config_ struct config *cfg = c.cfg;
    _cleanup_error_ struct al_error *err = NULL;
    struct image_info **v = NULL;
    size_t n = 0;
    if (image_list(cfg->agent.state_dir, &v, &n, &err) < 0) {
        fprintf(stderr, "agentlab: %s\n", al_error_message(err));
        return 1;
    }
    int rc = 0;
    if (json) {
        _cleanup_free_ char *text = NULL;
        if (image_info_to_json(v, n, true, &text, &err) < 0) {
            fprintf(stderr, "agentlab: %s\n", al_error_message(err));
            rc = 1;
        } else {
            fputs(text, stdout);
        }
    } else if (n == 0) {
        printf("no images in %s/images (build one with 'agentlab image build')\n",
               cfg->agent.state_dir);
    } else {
        printf("%-20s %-20s %7s %-18s %s\n", "NAME", "CREATED", "SIZE", "KERNEL", "RECIPE HASH");
        for (size_t i = 0; i < n; i++) {
            char created[32], size[32];
            al_format_time_ms(v[i]->created_ms, created, sizeof(created));
            created[19] = '\0'; /* to the second */
            created[10] = ' ';
            format_size(v[i]->size, size, sizeof(size));
            printf("%-20s %-20s %7s %-18s %.12s\n", v[i]->name, created, size,
                   v[i]->kernel_version ? v[i]->kernel_version : "-",
                   v[i]->recipe_hash ? v[i]->recipe_hash : "-");
        }
    }
    image_info_list_free(v, n);
    return rc;
}

static int cmd_inspect(int argc, char **argv)
{
    struct common c = {0};
    const char *name = NULL;
    for (int i = 1; i < argc; i++) {
        if (is_help(argv[i])) {
            fputs(inspect_help, stdout);
            return 0;
        } else if ((streq(argv[i], "--config") || streq(argv[i], "-c")) && i + 1 < argc) {
            c.config_path = argv[++i];
        } else if (argv[i][0] != '-' && !name) {
            name = argv[i];
        } else {
            fprintf(stderr, "agentlab image inspect: unexpected argument \"%s\"\n%s", argv[i],
                    inspect_help);
            return 2;
        }
    }
    if (!name) {
        fputs(inspect_help, stderr);
        return 2;
    }
    if (load_config(&c) < 0)
        return 1;
    _cleanup_config_ struct config *cfg = c.cfg;
    _cleanup_error_ struct al_error *err = NULL;
    _cleanup_image_info_ struct image_info *info = NULL;
    _cleanup_free_ char *text = NULL;
    if (image_find(cfg->agent.state_dir, name, &info, &err) < 0 ||
        image_info_to_json(&info, 1, false, &text, &err) < 0) {
        fprintf(stderr, "agentlab: %s\n", al_error_message(err));
        return 1;
    }
    fputs(text, stdout);
    return 0;
}

static int cmd_rm(int argc, char **argv)
{
    struct common c = {0};
    const char *name = NULL;
    bool force = false;
    for (int i = 1; i < argc; i++) {
        if (is_help(argv[i])) {
            fputs(rm_help, stdout);
            return 0;
        } else if (streq(argv[i], "--force")) {
            force = true;
        } else if ((streq(argv[i], "--config") || streq(argv[i], "-c")) && i + 1 < argc) {
            c.config_path = argv[++i];
        } else if (argv[i][0] != '-' && !name) {
            name = argv[i];
        } else {
            fprintf(stderr, "agentlab image rm: unexpected argument \"%s\"\n%s", argv[i], rm_help);
            return 2;
        }
    }
    if (!name) {
        fputs(rm_help, stderr);
        return 2;
    }
    if (load_config(&c) < 0)
        return 1;
    _cleanup_config_ struct config *cfg = c.cfg;
    const struct backend_settings *be = libvirt_backend(cfg);
    _cleanup_error_ struct al_error *err = NULL;
    int r = image_remove(cfg->agent.state_dir, name, force || !be ? NULL : be->libvirt.uri, &err);
    if (r < 0) {
        fprintf(stderr, "agentlab: image rm %s: %s%s\n", name, al_error_message(err),
                r == -EHOSTDOWN ? " (--force removes it without asking libvirt)" : "");
        return 1;
    }
    printf("removed image %s\n", name);
    return 0;
}

static const char import_help[] =
        "Usage: agentlab image import NAME --kernel FILE --initrd FILE [--disk FILE.qcow2]\n"
        "                             [--cmdline TEXT] [--force]\n"
        "\n"
        "Adds an image built elsewhere: jobs boot KERNEL with INITRD and CMDLINE\n"
        "directly, on a copy-on-write clone of DISK (an empty 64 MiB qcow2 when no\n"
        "disk is given, for guests that live in their initramfs). The guest must\n"
        "start agentlab-guest itself (cloud-init or its init). --force replaces an\n"
        "existing image of that name.\n";

static int cmd_import(int argc, char **argv)
{
    struct common c = {0};
    struct image_import imp = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        if (is_help(a)) {
            fputs(import_help, stdout);
            return 0;
        } else if (streq(a, "--kernel") && has) {
            imp.kernel = argv[++i];
        } else if (streq(a, "--initrd") && has) {
            imp.initrd = argv[++i];
        } else if (streq(a, "--disk") && has) {
            imp.disk = argv[++i];
        } else if (streq(a, "--cmdline") && has) {
            imp.cmdline = argv[++i];
        } else if (streq(a, "--force")) {
            imp.replace = true;
        } else if ((streq(a, "--config") || streq(a, "-c")) && has) {
            c.config_path = argv[++i];
        } else if (a[0] != '-' && !imp.name) {
            imp.name = a;
        } else {
            fprintf(stderr, "agentlab image import: unexpected argument \"%s\"\n%s", a,
                    import_help);
            return 2;
        }
    }
    if (!imp.name || !imp.kernel || !imp.initrd) {
        fputs(import_help, stderr);
        return 2;
    }
    if (load_config(&c) < 0)
        return 1;
    _cleanup_config_ struct config *cfg = c.cfg;
    _cleanup_error_ struct al_error *err = NULL;
    if (image_import(cfg->agent.state_dir, &imp, &err) < 0) {
        fprintf(stderr, "agentlab: image import %s: %s\n", imp.name, al_error_message(err));
        return 1;
    }
    printf("imported image %s\n", imp.name);
    return 0;
}

int cmd_image(int argc, char **argv)
{
    if (argc < 2) {
        fputs(usage_text, stderr);
        return 2;
    }
    if (is_help(argv[1]) || streq(argv[1], "help")) {
        fputs(usage_text, stdout);
        return 0;
    }
    static const struct cli_command subs[] = {
            {"build", "build an image", cmd_build}, {"list", "list images", cmd_list},
            {"ls", "list images", cmd_list},        {"inspect", "show an image", cmd_inspect},
            {"rm", "remove an image", cmd_rm},      {"import", "import an image", cmd_import},
    };
    for (size_t i = 0; i < ARRAY_SIZE(subs); i++)
        if (streq(argv[1], subs[i].name))
            return subs[i].run(argc - 1, argv + 1);
    fprintf(stderr, "agentlab image: unknown command \"%s\"\n%s", argv[1], usage_text);
    return 2;
}
