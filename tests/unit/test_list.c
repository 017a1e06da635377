#include "test_util.h"

#include <stdlib.h>

#include "runner/base/list.h"

struct item {
    int v;
    struct al_list link;
};

/* The values of the list in order, as a string of digits. */
static const char *values(struct al_list *head)
{
    static char out[32];
    size_t n = 0;
    al_list_for_each(it, head, struct item, link) {
        if (n + 1 < sizeof(out))
            out[n++] = (char)('0' + it->v);
    }
    out[n] = '\0';
    return out;
}

static void test_add_order(void **state)
{
    (void)state;
    struct al_list head = AL_LIST_INIT(head);
    struct item it[5];
    assert_true(al_list_empty(&head));
    assert_string_equal(values(&head), "");
    for (int i = 0; i < 5; i++) {
        it[i].v = i;
        al_list_init(&it[i].link);
        assert_false(al_list_linked(&it[i].link));
    }
    al_list_add_tail(&head, &it[1].link);
    al_list_add_tail(&head, &it[2].link);
    al_list_add(&head, &it[0].link);
    al_list_add_tail(&head, &it[3].link);
    al_list_add(&head, &it[4].link);
    assert_false(al_list_empty(&head));
    assert_string_equal(values(&head), "40123");
    assert_int_equal(al_list_length(&head), 5);
    assert_ptr_equal(al_list_first_entry(&head, struct item, link), &it[4]);
    assert_true(al_list_linked(&it[3].link));
}

static void test_del(void **state)
{
    (void)state;
    struct al_list head;
    al_list_init(&head);
    struct item it[4];
    for (int i = 0; i < 4; i++) {
        it[i].v = i;
        al_list_add_tail(&head, &it[i].link);
    }
    /* middle, last, first: no end is special */
    al_list_del(&it[1].link);
    assert_string_equal(values(&head), "023");
    al_list_del(&it[3].link);
    assert_string_equal(values(&head), "02");
    al_list_del(&it[0].link);
    assert_string_equal(values(&head), "2");
    assert_false(al_list_linked(&it[0].link));
    /* unlinking again is harmless and leaves the list alone */
    al_list_del(&it[0].link);
    al_list_del(&it[1].link);
    assert_string_equal(values(&head), "2");
    al_list_del(&it[2].link);
    assert_true(al_list_empty(&head));
    assert_int_equal(al_list_length(&head), 0);
    /* an unlinked element goes onto another list as new */
    al_list_add(&head, &it[1].link);
    assert_string_equal(values(&head), "1");
}

/* The _safe walk lets the body unlink and free the current element. */
static void test_safe_walk_frees(void **state)
{
    (void)state;
    struct al_list head = AL_LIST_INIT(head);
    for (int i = 0; i < 8; i++) {
        struct item *it = calloc(1, sizeof(*it));
        assert_non_null(it);
        it->v = i;
        al_list_add_tail(&head, &it->link);
    }
    al_list_for_each_safe(it, next, &head, struct item, link) {
        if (it->v % 2) {
            al_list_del(&it->link);
            free(it);
        }
    }
    assert_string_equal(values(&head), "0246");
    al_list_for_each_safe(it, next, &head, struct item, link) {
        al_list_del(&it->link);
        free(it);
    }
    assert_true(al_list_empty(&head));
    /* walking an empty list runs no body */
    int n = 0;
    al_list_for_each_safe(it, next, &head, struct item, link) {
        (void)it;
        n++;
    }
    assert_int_equal(n, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_add_order),
            cmocka_unit_test(test_del),
            cmocka_unit_test(test_safe_walk_frees),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
