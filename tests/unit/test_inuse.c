#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runner/base/util.h"
#include "images/inuse.h"

static const char xml[] = "<domain type='qemu'>\n"
                          "  <name>agentlab-job-1</name>\n"
                          "  <os>\n"
                          "    <type arch='x86_64' machine='pc'>hvm</type>\n"
                          "    <kernel>/var/lib/agentlab/images/debian-12/vmlinuz</kernel>\n"
                          "    <initrd>/var/lib/agentlab/images/o&apos;brien/initrd.img</initrd>\n"
                          "    <cmdline>root=/dev/vda</cmdline>\n"
                          "  </os>\n"
                          "  <devices>\n"
                          "    <disk type='file' device='disk'>\n"
                          "      <source file='/run/agentlab/jobs/1/overlay.qcow2' index='2'/>\n"
                          "      <backingStore type='file' index='3'>\n"
                          "        <source file=\"/var/lib/agentlab/images/a&amp;b/disk.qcow2\"/>\n"
                          "      </backingStore>\n"
                          "    </disk>\n"
                          "    <serial type='file'><source path='/tmp/console.log'/></serial>\n"
                          "    <disk type='block'><source dev='/dev/sdb'/></disk>\n"
                          "  </devices>\n"
                          "</domain>\n";

static void test_xml_paths(void **state)
{
    (void)state;
    char **p = NULL;
    assert_int_equal(inuse_domain_xml_paths(xml, &p), 0);
    /* attributes first, then elements; the serial log (path=) is not a disk */
    assert_string_equal(p[0], "/run/agentlab/jobs/1/overlay.qcow2");
    assert_string_equal(p[1], "/var/lib/agentlab/images/a&b/disk.qcow2");
    assert_string_equal(p[2], "/var/lib/agentlab/images/debian-12/vmlinuz");
    assert_string_equal(p[3], "/var/lib/agentlab/images/o'brien/initrd.img");
    assert_null(p[4]);
    strv_free(p);
}

static void write_qcow2(const char *path, const char *backing)
{
    unsigned char hdr[512] = {'Q', 'F', 'I', 0xfb, 0, 0, 0, 3};
    size_t len = backing ? strlen(backing) : 0;
    if (backing) {
        hdr[15] = 0x80; /* backing file name at offset 128 */
        hdr[19] = (unsigned char)len;
        memcpy(hdr + 128, backing, len);
    }
    assert_int_equal(al_write_file_atomic(path, hdr, sizeof(hdr), 0644, NULL), 0);
}

static void test_backing_chain(void **state)
{
    (void)state;
    char *dir = test_tmpdir("inuse");
    char *img = al_path_join(dir, "images/debian-12");
    char *jobs = al_path_join(dir, "jobs");
    assert_int_equal(al_mkdir_p(img, 0755, NULL), 0);
    assert_int_equal(al_mkdir_p(jobs, 0755, NULL), 0);
    char *base = al_path_join(img, "disk.qcow2");
    char *mid = al_path_join(jobs, "mid.qcow2");
    char *top = al_path_join(jobs, "top.qcow2");
    char *raw = al_path_join(jobs, "raw.img");
    write_qcow2(base, NULL);
    write_qcow2(mid, base);        /* absolute */
    write_qcow2(top, "mid.qcow2"); /* relative to its own directory */
    assert_int_equal(al_write_file_atomic(raw, "not qcow2", 9, 0644, NULL), 0);

    char *b = NULL;
    assert_int_equal(inuse_qcow2_backing(top, &b, NULL), 0);
    assert_string_equal(b, mid);
    free(b);
    assert_int_equal(inuse_qcow2_backing(base, &b, NULL), 0);
    assert_null(b);
    assert_int_equal(inuse_qcow2_backing(raw, &b, NULL), 0);
    assert_null(b);
    assert_int_equal(inuse_qcow2_backing("/nonexistent.qcow2", &b, NULL), 0);
    assert_null(b);

    assert_true(inuse_path_is_under(base, img));
    assert_false(inuse_path_is_under(top, img));
    char *sibling = al_path_join(dir, "images/debian-12-old/disk.qcow2");
    assert_false(inuse_path_is_under(sibling, img)); /* a prefix, not a parent */
    free(sibling);

    free(base);
    free(mid);
    free(top);
    free(raw);
    free(img);
    free(jobs);
    test_tmpdir_remove(dir);
}

/* libvirt's test driver: a domain that does not use the directory. */
static void test_libvirt_test_driver(void **state)
{
    (void)state;
    char **names = NULL;
    struct al_error *err = NULL;
    if (inuse_libvirt_domains("test:///default", "/var/lib/agentlab/images/x", &names, &err) < 0)
        fail_msg("%s", al_error_message(err));
    assert_null(names[0]);
    strv_free(names);
    /* test:///default's domain has a disk under /guest */
    assert_int_equal(inuse_libvirt_domains("test:///default", "/", &names, &err), 0);
    strv_free(names);
    assert_true(inuse_libvirt_domains("test:///nonexistent/file.xml", "/", &names, &err) < 0);
    assert_non_null(strstr(al_error_message(err), "test:///nonexistent"));
    al_error_free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_xml_paths),
            cmocka_unit_test(test_backing_chain),
            cmocka_unit_test(test_libvirt_test_driver),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
