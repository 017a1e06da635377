/* Image volumes by checksum (provision/libvirt_upload.c): names, the
 * completion marker, the volume XML (libvirt's schema accepts it), and the
 * sweep's choice of what to delete, on libvirt's test driver. The upload
 * itself needs a real libvirtd: tests/integration/test_image_upload.c. */
#include "test_util.h"

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "provision/libvirt_upload.h"
#include "runner/base/macro.h"
#include "runner/base/util.h"

#define SHA_A "1b7af784841125887e688254229e282829e17245d0e47fe7280da9b68a30d9e1"
#define SHA_B "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

static void test_names(void **state)
{
    (void)state;
    char *name = NULL;
    assert_int_equal(image_vol_name("micro", IMAGE_VOL_DISK, SHA_A, &name, NULL), 0);
    assert_string_equal(name, "agentlab-img-micro-disk-1b7af78484112588.qcow2");
    free(name);
    assert_int_equal(image_vol_name("debian-12.x_y", IMAGE_VOL_KERNEL, SHA_B, &name, NULL), 0);
    assert_string_equal(name, "agentlab-img-debian-12.x_y-kernel-0011223344556677");
    free(name);
    assert_int_equal(image_vol_name("micro", IMAGE_VOL_INITRD, SHA_B, &name, NULL), 0);
    assert_string_equal(name, "agentlab-img-micro-initrd-0011223344556677");
    free(name);

    /* a checksum that changes in its first 16 digits changes the name */
    char *a = NULL, *b = NULL;
    assert_int_equal(image_vol_name("micro", IMAGE_VOL_DISK, SHA_A, &a, NULL), 0);
    assert_int_equal(image_vol_name("micro", IMAGE_VOL_DISK, SHA_B, &b, NULL), 0);
    assert_string_not_equal(a, b);
    free(a);
    free(b);

    static const char *const bad_images[] = {"", ".hidden", "-x", "a/b", "a b", "a<b", "é", "../x"};
    for (size_t i = 0; i < ARRAY_SIZE(bad_images); i++) {
        struct al_error *err = NULL;
        name = NULL;
        assert_int_equal(image_vol_name(bad_images[i], IMAGE_VOL_DISK, SHA_A, &name, &err),
                         -EINVAL);
        assert_null(name);
        assert_non_null(err);
        al_error_free(err);
    }
    char long_name[IMAGE_VOL_IMAGE_MAX + 2];
    memset(long_name, 'a', sizeof(long_name) - 1);
    long_name[IMAGE_VOL_IMAGE_MAX + 1] = '\0';
    assert_int_equal(image_vol_name(long_name, IMAGE_VOL_DISK, SHA_A, &name, NULL), -EINVAL);
    long_name[IMAGE_VOL_IMAGE_MAX] = '\0';
    assert_int_equal(image_vol_name(long_name, IMAGE_VOL_DISK, SHA_A, &name, NULL), 0);
    free(name);

    static const char *const bad_sums[] = {
            "", "1b7a",
            /* upper case, 63 and 65 digits, a non-hex digit */
            "1B7AF784841125887E688254229E282829E17245D0E47FE7280DA9B68A30D9E1",
            "1b7af784841125887e688254229e282829e17245d0e47fe7280da9b68a30d9e",
            "1b7af784841125887e688254229e282829e17245d0e47fe7280da9b68a30d9e11",
            "1b7af784841125887e688254229e282829e17245d0e47fe7280da9b68a30d9eg"};
    for (size_t i = 0; i < ARRAY_SIZE(bad_sums); i++)
        assert_int_equal(image_vol_name("micro", IMAGE_VOL_DISK, bad_sums[i], &name, NULL),
                         -EINVAL);
    assert_int_equal(image_vol_name("micro", (enum image_vol_role)7, SHA_A, &name, NULL), -EINVAL);
}

static void test_marker_text(void **state)
{
    (void)state;
    char *t = NULL;
    assert_int_equal(image_vol_marker_text(SHA_A, 196616, &t, NULL), 0);
    assert_string_equal(t, "sha256 " SHA_A " size 196616\n");
    free(t);
    /* the largest size still fits the marker reader's limit */
    assert_int_equal(image_vol_marker_text(SHA_A, UINT64_MAX, &t, NULL), 0);
    assert_true(strlen(t) <= 128);
    free(t);
    assert_int_equal(image_vol_marker_text("nope", 1, &t, NULL), -EINVAL);
}

static void test_classify(void **state)
{
    (void)state;
    size_t len = 0;
    const char *content = "agentlab-img-micro-disk-1b7af78484112588.qcow2";
    const char *marker = "agentlab-img-micro-disk-1b7af78484112588.qcow2.sha256";
    assert_int_equal(image_vol_classify(content, &len), IMAGE_VOL_CONTENT);
    assert_int_equal(image_vol_classify(marker, &len), IMAGE_VOL_MARKER);
    assert_int_equal(len, strlen(content));
    assert_int_equal(image_vol_classify("agentlab-img-", NULL), IMAGE_VOL_NOT_OURS);
    assert_int_equal(image_vol_classify("agentlab-img-.sha256", NULL), IMAGE_VOL_NOT_OURS);
    /* overlays and seeds of job VMs are not images */
    assert_int_equal(image_vol_classify("agentlab-job1-a1.qcow2", NULL), IMAGE_VOL_NOT_OURS);
    assert_int_equal(image_vol_classify("disk.qcow2", NULL), IMAGE_VOL_NOT_OURS);
    assert_int_equal(image_vol_classify(NULL, NULL), IMAGE_VOL_NOT_OURS);
}

static void test_volume_xml_validates(void **state)
{
    (void)state;
    char *tmp = test_tmpdir("uploadxml");
    char *xml = NULL;
    assert_int_equal(
            image_vol_xml("agentlab-img-micro-disk-1b7af78484112588.qcow2", 196616, &xml, NULL), 0);
    assert_non_null(strstr(xml, "<capacity unit='bytes'>196616</capacity>"));
    assert_non_null(strstr(xml, "<allocation unit='bytes'>0</allocation>"));
    assert_non_null(strstr(xml, "<format type='raw'/>"));
    _cleanup_free_ char *path = al_path_join(tmp, "vol.xml");
    assert_int_equal(al_write_file_atomic(path, xml, strlen(xml), 0644, NULL), 0);
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "virt-xml-validate %s storagevol >/dev/null 2>&1", path);
    assert_int_equal(system(cmd), 0);
    free(xml);
    /* a name is escaped, never spliced */
    assert_int_equal(image_vol_xml("a<b&c", 1, &xml, NULL), 0);
    assert_non_null(strstr(xml, "<name>a&lt;b&amp;c</name>"));
    free(xml);
    test_tmpdir_remove(tmp);
}

static void create_vol(virStoragePoolPtr pool, const char *name)
{
    char *xml = NULL;
    assert_int_equal(image_vol_xml(name, 4096, &xml, NULL), 0);
    virStorageVolPtr v = virStorageVolCreateXML(pool, xml, 0);
    if (!v)
        fail_msg("creating %s: %s", name, virGetLastErrorMessage());
    virStorageVolFree(v);
    free(xml);
}

static bool has_vol(virStoragePoolPtr pool, const char *name)
{
    virStorageVolPtr v = virStorageVolLookupByName(pool, name);
    if (v)
        virStorageVolFree(v);
    return v != NULL;
}

#define K    "agentlab-img-micro-disk-aaaaaaaaaaaaaaaa.qcow2"
#define OLD  "agentlab-img-micro-disk-bbbbbbbbbbbbbbbb.qcow2"
#define CUT  "agentlab-img-micro-kernel-cccccccccccccccc"
#define LONE "agentlab-img-micro-initrd-dddddddddddddddd"
#define M    ".sha256"

static void quiet(void *data, virErrorPtr e)
{
    (void)data;
    (void)e;
}

/* On the test driver's pool: what stays and what goes. */
static void test_sweep(void **state)
{
    (void)state;
    virSetErrorFunc(NULL, quiet);
    virConnectPtr conn = virConnectOpen("test:///default");
    assert_non_null(conn);
    virStoragePoolPtr pool = virStoragePoolLookupByName(conn, "default-pool");
    assert_non_null(pool);
    create_vol(pool, K);
    create_vol(pool, K M); /* complete, kept */
    create_vol(pool, OLD);
    create_vol(pool, OLD M);  /* complete, not kept */
    create_vol(pool, CUT);    /* kept, but its upload was cut: no marker */
    create_vol(pool, LONE M); /* a marker without its content */
    create_vol(pool, "agentlab-job-1.qcow2");
    create_vol(pool, "someone-elses.img");

    const char *const keep[] = {K, CUT, LONE, NULL};
    unsigned removed = 99;
    struct al_error *err = NULL;
    int r = image_vol_sweep(conn, "default-pool", keep, &removed, &err);
    if (r < 0)
        fail_msg("%s", al_error_message(err));
    assert_int_equal(removed, 4);
    assert_true(has_vol(pool, K));
    assert_true(has_vol(pool, K M));
    assert_false(has_vol(pool, OLD));
    assert_false(has_vol(pool, OLD M));
    assert_false(has_vol(pool, CUT));
    assert_false(has_vol(pool, LONE M));
    assert_true(has_vol(pool, "agentlab-job-1.qcow2"));
    assert_true(has_vol(pool, "someone-elses.img"));

    /* nothing kept: every image volume goes, nothing else */
    assert_int_equal(image_vol_sweep(conn, "default-pool", NULL, &removed, NULL), 0);
    assert_int_equal(removed, 2);
    assert_false(has_vol(pool, K));
    assert_true(has_vol(pool, "someone-elses.img"));
    /* and again: nothing to do */
    assert_int_equal(image_vol_sweep(conn, "default-pool", NULL, &removed, NULL), 0);
    assert_int_equal(removed, 0);
    /* a pool that does not exist holds nothing to sweep */
    removed = 99;
    assert_int_equal(image_vol_sweep(conn, "no-such-pool", NULL, &removed, NULL), 0);
    assert_int_equal(removed, 0);
    virStoragePoolFree(pool);
    virConnectClose(conn);
}

/* Listing is read-only and shows complete volumes only: on the test driver
 * (which cannot stream a marker's text) a pool with contents but no
 * markers lists nothing, and a missing pool is no error. The markers'
 * checks run against a real libvirtd in the daemon test host_ls. */
static void test_list_without_markers(void **state)
{
    (void)state;
    virSetErrorFunc(NULL, quiet);
    virConnectPtr conn = virConnectOpen("test:///default");
    assert_non_null(conn);
    virStoragePoolPtr pool = virStoragePoolLookupByName(conn, "default-pool");
    assert_non_null(pool);
    create_vol(pool, K);
    create_vol(pool, CUT);
    create_vol(pool, "agentlab-job-1.qcow2");
    struct image_vol_entry *v = (void *)1;
    size_t n = 99;
    struct al_error *err = NULL;
    if (image_vol_list(conn, "default-pool", &v, &n, &err) < 0)
        fail_msg("%s", al_error_message(err));
    assert_int_equal(n, 0);
    image_vol_entries_free(v, n);
    assert_true(has_vol(pool, K)); /* nothing removed */
    assert_true(has_vol(pool, CUT));
    v = (void *)1;
    assert_int_equal(image_vol_list(conn, "no-such-pool", &v, &n, NULL), 0);
    assert_int_equal(n, 0);
    assert_null(v);
    assert_int_equal(image_vol_sweep(conn, "default-pool", NULL, NULL, NULL), 0);
    virStoragePoolFree(pool);
    virConnectClose(conn);
}

#define SHA_K          \
    "aaaaaaaaaaaaaaaa" \
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define KERNEL_NEW "agentlab-img-micro-kernel-eeeeeeeeeeeeeeee"
#define KERNEL_OLD "agentlab-img-micro-kernel-ffffffffffffffff"
#define INITRD_OLD "agentlab-img-micro-initrd-9999999999999999"
#define OTHER      "agentlab-img-other-disk-1111111111111111.qcow2"

static char *vol_path(virStoragePoolPtr pool, const char *name)
{
    virStorageVolPtr v = virStorageVolLookupByName(pool, name);
    assert_non_null(v);
    char *p = virStorageVolGetPath(v);
    assert_non_null(p);
    virStorageVolFree(v);
    return p;
}

static void sweep_unused_ok(virConnectPtr conn, const struct image_vol_current *cur, size_t n,
                            const char *const *held, unsigned removed, unsigned in_use)
{
    struct image_vol_sweep_result res = {99, 99};
    struct al_error *err = NULL;
    if (image_vol_sweep_unused(conn, "default-pool", cur, n, held, &res, &err) < 0)
        fail_msg("%s", al_error_message(err));
    assert_int_equal(res.removed, removed);
    assert_int_equal(res.in_use, in_use);
}

/* The daemon's rule on the test driver: old builds of a known image and
 * role go unless a domain, another volume or the caller uses them; cut
 * uploads and stray markers go; unknown images and foreign volumes stay. */
static void test_sweep_unused(void **state)
{
    (void)state;
    virSetErrorFunc(NULL, quiet);
    virConnectPtr conn = virConnectOpen("test:///default");
    assert_non_null(conn);
    virStoragePoolPtr pool = virStoragePoolLookupByName(conn, "default-pool");
    assert_non_null(pool);
    const char *complete[] = {K, OLD, KERNEL_NEW, KERNEL_OLD, INITRD_OLD, OTHER};
    for (size_t i = 0; i < ARRAY_SIZE(complete); i++) {
        create_vol(pool, complete[i]);
        _cleanup_free_ char *m = NULL;
        assert_true(asprintf(&m, "%s" M, complete[i]) > 0);
        create_vol(pool, m);
    }
    create_vol(pool, CUT);
    create_vol(pool, LONE M);
    create_vol(pool, "someone-elses.img");
    const struct image_vol_current cur[] = {
            {"micro", IMAGE_VOL_DISK, SHA_K},
            {"micro", IMAGE_VOL_KERNEL,
             "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"},
            {"micro", IMAGE_VOL_INITRD,
             "8888888888888888888888888888888888888888888888888888888888888888"},
    };
    /* a domain boots the old kernel, the caller holds the old initrd */
    _cleanup_free_ char *kpath = vol_path(pool, KERNEL_OLD);
    _cleanup_free_ char *ipath = vol_path(pool, INITRD_OLD);
    _cleanup_free_ char *xml = NULL;
    assert_true(asprintf(&xml,
                         "<domain type='test'><name>sweep</name><memory>65536</memory>"
                         "<os><type>hvm</type><kernel>%s</kernel></os></domain>",
                         kpath) > 0);
    virDomainPtr dom = virDomainDefineXML(conn, xml);
    if (!dom)
        fail_msg("%s", virGetLastErrorMessage());
    const char *held[] = {ipath, NULL};

    /* OLD and its marker, CUT, the stray marker */
    sweep_unused_ok(conn, cur, ARRAY_SIZE(cur), held, 4, 2);
    assert_false(has_vol(pool, OLD));
    assert_false(has_vol(pool, OLD M));
    assert_false(has_vol(pool, CUT));
    assert_false(has_vol(pool, LONE M));
    assert_true(has_vol(pool, K) && has_vol(pool, K M));
    assert_true(has_vol(pool, KERNEL_OLD) && has_vol(pool, KERNEL_OLD M));
    assert_true(has_vol(pool, INITRD_OLD) && has_vol(pool, INITRD_OLD M));
    assert_true(has_vol(pool, OTHER) && has_vol(pool, OTHER M));

    /* the domain gone, the hold too: both old builds go */
    assert_int_equal(virDomainUndefine(dom), 0);
    virDomainFree(dom);
    sweep_unused_ok(conn, cur, ARRAY_SIZE(cur), NULL, 4, 0);
    assert_false(has_vol(pool, KERNEL_OLD) || has_vol(pool, KERNEL_OLD M));
    assert_false(has_vol(pool, INITRD_OLD) || has_vol(pool, INITRD_OLD M));
    assert_true(has_vol(pool, K) && has_vol(pool, KERNEL_NEW));
    assert_true(has_vol(pool, OTHER));
    assert_true(has_vol(pool, "someone-elses.img"));
    /* told nothing: nothing complete goes */
    sweep_unused_ok(conn, NULL, 0, NULL, 0, 0);
    assert_true(has_vol(pool, K) && has_vol(pool, KERNEL_NEW) && has_vol(pool, OTHER));
    struct image_vol_sweep_result res = {99, 99};
    assert_int_equal(image_vol_sweep_unused(conn, "no-such-pool", NULL, 0, NULL, &res, NULL), 0);
    assert_int_equal(res.removed, 0);
    virStoragePoolFree(pool);
    virConnectClose(conn);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_names),        cmocka_unit_test(test_marker_text),
            cmocka_unit_test(test_classify),     cmocka_unit_test(test_volume_xml_validates),
            cmocka_unit_test(test_sweep),        cmocka_unit_test(test_list_without_markers),
            cmocka_unit_test(test_sweep_unused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
