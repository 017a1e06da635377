/* An intrusive, circular, doubly-linked list.
 *
 * A list is a struct al_list head; each element embeds a struct al_list
 * link and is reached from it with al_list_entry(). The head is a sentinel:
 * an empty list is a head that points at itself, so adding and unlinking
 * never special-case the ends and an element unlinks itself in O(1)
 * without knowing which list it is on.
 *
 * A head must be initialised (al_list_init() or AL_LIST_INIT) before use;
 * a zeroed one is not a list. An element's link is "unlinked" when it
 * points at itself: al_list_init() it when the element is made and
 * al_list_del() leaves it so, which makes unlinking twice harmless and
 * lets al_list_linked() tell whether an element is on a list.
 *
 * No locking, no allocation: the caller owns the elements.
 */
#ifndef AL_LIST_H
#define AL_LIST_H

#include <stdbool.h>
#include <stddef.h>

#include "runner/base/macro.h"

struct al_list {
    struct al_list *next;
    struct al_list *prev;
};

/* A head initialised where it is defined: struct al_list h = AL_LIST_INIT(h); */
#define AL_LIST_INIT(name) ((struct al_list){.next = &(name), .prev = &(name)})

static inline void al_list_init(struct al_list *l)
{
    l->next = l;
    l->prev = l;
}

static inline bool al_list_empty(const struct al_list *head)
{
    return head->next == head;
}

/* Whether an element's link is on a list (an unlinked link points at itself). */
static inline bool al_list_linked(const struct al_list *link)
{
    return link->next != link;
}

static inline void al_list_insert_between_(struct al_list *n, struct al_list *prev,
                                           struct al_list *next)
{
    n->prev = prev;
    n->next = next;
    prev->next = n;
    next->prev = n;
}

/* Adds n at the front of the list. */
static inline void al_list_add(struct al_list *head, struct al_list *n)
{
    al_list_insert_between_(n, head, head->next);
}

/* Adds n at the end of the list. */
static inline void al_list_add_tail(struct al_list *head, struct al_list *n)
{
    al_list_insert_between_(n, head->prev, head);
}

/* Unlinks n from whatever list it is on and leaves it unlinked; a no-op on
 * an unlinked element. */
static inline void al_list_del(struct al_list *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    al_list_init(n);
}

#define al_list_entry(link, type, member) container_of(link, type, member)

/* The first element; the list must not be empty. */
#define al_list_first_entry(head, type, member) al_list_entry((head)->next, type, member)

/* Iterates over the elements of head in order, declaring pos as a type *
 * (e.g. al_list_for_each(j, &e->queue, struct ejob, link)). The body must
 * not unlink pos; use the _safe form for that. */
#define al_list_for_each(pos, head, type, member)                                       \
    for (type *pos = al_list_entry((head)->next, type, member); &pos->member != (head); \
         pos = al_list_entry(pos->member.next, type, member))

/* The same, but the body may unlink (and free) pos: tmp, declared too,
 * holds the next element. The body must not unlink tmp. */
#define al_list_for_each_safe(pos, tmp, head, type, member)         \
    for (type *pos = al_list_entry((head)->next, type, member),     \
              *tmp = al_list_entry(pos->member.next, type, member); \
         &pos->member != (head); pos = tmp, tmp = al_list_entry(tmp->member.next, type, member))

/* The number of elements: walks the list. */
static inline size_t al_list_length(const struct al_list *head)
{
    size_t n = 0;
    for (const struct al_list *l = head->next; l != head; l = l->next)
        n++;
    return n;
}

#endif
