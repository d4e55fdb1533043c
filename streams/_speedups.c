/*
 * streams._speedups: the shadow worker's per-request work (Request decode, outcomes,
 * Prediction encode, sampling hash), compiled.
 *
 * Why: decoding the Request was a third of the worker's poll thread in pure Python (py-spy
 * on bench/worker.py), ~3.7 us per request even hand-written (streams/request_decoder.py);
 * here it is the cost of building the record's dicts. The pure-Python path stays: it is
 * what runs where no C compiler was found at install (the extension is optional), and the
 * tests hold the two, and fastavro, to the same records.
 *
 * The contract is streams/request_decoder.py's: read_request() returns exactly the record
 * Codec.decode_as("Request", data) gives, or None when it does not take the message (a
 * header that is not the current Request schema's, a negative length or block count, a
 * varint past 63 bits, a body cut short, invalid UTF-8), and the caller then asks the
 * Python paths, fastavro last, which decode it or say why not. This code never refuses a
 * message itself, and it never raises, except MemoryError.
 *
 * Layout read (Avro specification, "Binary Encoding"), after the 10-byte single-object
 * header: request_id string, event_time long, use_case string, numeric_features
 * map<double>, categorical_features map<string>, context map<string>. Bytes after the
 * record are ignored, as fastavro's schemaless_reader ignores them.
 *
 * encode_answers() writes the worker's Predictions of the two usual shapes (an answer, a
 * failure) from their parts, as streams/prediction_encoder.py does, and leaves None for the
 * others, which that module writes (tests/unit/test_prediction_encoder.py compares the two
 * and fastavro).
 *
 * read_request() also returns the two parts of the request's bytes that every Prediction of the request
 * repeats (request_id and event_time; use_case), so the worker need not encode them again:
 * the head with the Prediction's header in front, and the tail. Each is None unless its
 * varints are in the shortest form, the only form fastavro writes, so the Prediction stays
 * byte for byte what fastavro would write. With view true it returns the worker's view of
 * the record instead (streams/request_decoder.py's worker_view: the features of both maps
 * in one dict, the context read but not kept), for exactly the messages it would take.
 *
 * float_outcomes() makes streams/models.py's Outcome tuples for a batch of finite float
 * answers, and leaves every other batch to that module's loop.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    const unsigned char *p;
    const unsigned char *end;
} Reader;

/* 1: read; 0: not taken (no error set); -1: a Python error is set (memory). */

static PyObject *k_request_id, *k_event_time, *k_use_case, *k_numeric, *k_categorical,
    *k_context, *k_features;

/* An unsigned varint of at most 9 bytes (63 bits), as streams/request_decoder.py reads it:
 * a longer one is fastavro's. *shortest: whether no shorter encoding of it exists. */
static int read_varint(Reader *r, uint64_t *out, int *shortest) {
    uint64_t result = 0;
    int shift = 0;
    const unsigned char *start = r->p;
    while (shift < 63) {
        if (r->p >= r->end) return 0;
        unsigned char b = *r->p++;
        result |= (uint64_t)(b & 0x7F) << shift;
        if (b < 0x80) {
            *out = result;
            if (shortest) *shortest = (r->p - start == 1) || b != 0;
            return 1;
        }
        shift += 7;
    }
    return 0;
}

/* Strings that repeat (feature names, categories, context values, use cases), by their
 * bytes: a service sends the same ones with every request, and a str made once is neither
 * decoded, allocated, hashed (a dict insertion reuses its cached hash) nor freed again. A
 * direct-mapped table of CACHE_SLOTS strings of at most CACHED_BYTES bytes, a slot replaced
 * on a collision: ~100 KB, whatever the traffic. Only ever touched with the GIL held. */
#define CACHE_SLOTS 2048
#define CACHED_BYTES 40

typedef struct {
    PyObject *text;
    Py_ssize_t size;
    unsigned char raw[CACHED_BYTES];
} Slot;

static Slot cache[CACHE_SLOTS];

static PyObject *decode_utf8(const unsigned char *p, Py_ssize_t size) {
    return PyUnicode_DecodeUTF8((const char *)p, size, "strict");
}

static PyObject *cached_utf8(const unsigned char *p, Py_ssize_t size) {
    if (size > CACHED_BYTES) return decode_utf8(p, size);
    uint32_t h = 2166136261u; /* FNV-1a */
    for (Py_ssize_t i = 0; i < size; i++) h = (h ^ p[i]) * 16777619u;
    Slot *slot = &cache[h & (CACHE_SLOTS - 1)];
    if (slot->text != NULL && slot->size == size && memcmp(slot->raw, p, size) == 0)
        return Py_NewRef(slot->text);
    PyObject *text = decode_utf8(p, size);
    if (text == NULL) return NULL;
    Py_XSETREF(slot->text, Py_NewRef(text));
    slot->size = size;
    memcpy(slot->raw, p, size);
    return text;
}

/* A string: zigzag length (negative: not taken), then that many bytes of strict UTF-8.
 * cached: whether the string is one that repeats (see cache). */
static int read_string(Reader *r, PyObject **out, int *shortest, int cached) {
    uint64_t u;
    if (read_varint(r, &u, shortest) != 1 || (u & 1)) return 0;
    uint64_t size = u >> 1;
    if (size > (uint64_t)(r->end - r->p)) return 0;
    PyObject *text = cached ? cached_utf8(r->p, (Py_ssize_t)size)
                            : decode_utf8(r->p, (Py_ssize_t)size);
    if (text == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyErr_Clear();
            return 0; /* fastavro's to refuse */
        }
        return -1;
    }
    r->p += size;
    *out = text;
    return 1;
}

/* A map's blocks into dict (insertion order and a repeated key's last value, as a dict
 * built entry by entry): doubles when doubles, else strings. dict NULL: read, not kept
 * (what the worker's view leaves out is still checked, so both views take the same
 * messages). */
static int read_map(Reader *r, PyObject *dict, int doubles) {
    for (;;) {
        uint64_t u;
        if (read_varint(r, &u, NULL) != 1 || (u & 1)) return 0; /* negative count: fastavro's */
        uint64_t count = u >> 1;
        if (count == 0) return 1;
        /* every entry takes at least 1 byte of key and 8 of double, or 2 bytes: a count
         * the rest of the message cannot hold is a body cut short */
        if (count > (uint64_t)(r->end - r->p) / (doubles ? 9 : 2)) return 0;
        for (uint64_t i = 0; i < count; i++) {
            PyObject *key = NULL, *value = NULL;
            int got = read_string(r, &key, NULL, 1);
            if (got != 1) return got;
            if (doubles) {
                if (r->end - r->p < 8) {
                    Py_DECREF(key);
                    return 0;
                }
                double d = PyFloat_Unpack8((const char *)r->p, 1);
                if (d == -1.0 && PyErr_Occurred()) {
                    Py_DECREF(key);
                    return -1;
                }
                r->p += 8;
                value = PyFloat_FromDouble(d);
                if (value == NULL) {
                    Py_DECREF(key);
                    return -1;
                }
            } else {
                got = read_string(r, &value, NULL, 1);
                if (got != 1) {
                    Py_DECREF(key);
                    return got;
                }
            }
            int failed = dict != NULL && PyDict_SetItem(dict, key, value);
            Py_DECREF(key);
            Py_DECREF(value);
            if (failed) return -1;
        }
    }
}

/* The record, head and tail as a tuple, or NULL with *taken 0 (not taken) or -1 (error).
 * view: the worker's view of the record instead (see read_request_doc). */
static PyObject *read_body(Reader *r, const unsigned char *body, PyObject *answer_header,
                           int view, int *taken) {
    PyObject *request_id = NULL, *event_time = NULL, *use_case = NULL, *numeric = NULL,
             *categorical = NULL, *context = NULL, *record = NULL, *head = NULL,
             *tail = NULL, *result = NULL;
    int shortest_id, shortest_time, shortest_case, got;
    uint64_t u;

    if ((got = read_string(r, &request_id, &shortest_id, 0)) != 1) goto done;
    if ((got = read_varint(r, &u, &shortest_time)) != 1) goto done;
    const unsigned char *head_end = r->p;
    event_time = PyLong_FromLongLong((long long)(u >> 1) ^ -(long long)(u & 1));
    if (event_time == NULL) {
        got = -1;
        goto done;
    }
    const unsigned char *tail_start = r->p;
    if ((got = read_string(r, &use_case, &shortest_case, 1)) != 1) goto done;
    const unsigned char *tail_end = r->p;
    got = -1;
    if (view) {
        /* one dict of both feature maps, the categorical entries last (a name in both keeps
         * the categorical value, as {**numeric, **categorical} does); context not kept */
        if ((numeric = PyDict_New()) == NULL) goto done;
        if ((got = read_map(r, numeric, 1)) != 1) goto done;
        if ((got = read_map(r, numeric, 0)) != 1) goto done;
        if ((got = read_map(r, NULL, 0)) != 1) goto done;
        got = -1;
        if ((record = PyDict_New()) == NULL) goto done;
        if (PyDict_SetItem(record, k_request_id, request_id) ||
            PyDict_SetItem(record, k_event_time, event_time) ||
            PyDict_SetItem(record, k_use_case, use_case) ||
            PyDict_SetItem(record, k_features, numeric))
            goto done;
    } else {
        if ((numeric = PyDict_New()) == NULL || (categorical = PyDict_New()) == NULL ||
            (context = PyDict_New()) == NULL)
            goto done;
        if ((got = read_map(r, numeric, 1)) != 1) goto done;
        if ((got = read_map(r, categorical, 0)) != 1) goto done;
        if ((got = read_map(r, context, 0)) != 1) goto done;
        got = -1;
        if ((record = PyDict_New()) == NULL) goto done;
        if (PyDict_SetItem(record, k_request_id, request_id) ||
            PyDict_SetItem(record, k_event_time, event_time) ||
            PyDict_SetItem(record, k_use_case, use_case) ||
            PyDict_SetItem(record, k_numeric, numeric) ||
            PyDict_SetItem(record, k_categorical, categorical) ||
            PyDict_SetItem(record, k_context, context))
            goto done;
    }
    if (shortest_id && shortest_time && answer_header != Py_None) {
        Py_ssize_t size = PyBytes_GET_SIZE(answer_header);
        head = PyBytes_FromStringAndSize(NULL, size + (head_end - body));
        if (head == NULL) goto done;
        memcpy(PyBytes_AS_STRING(head), PyBytes_AS_STRING(answer_header), size);
        memcpy(PyBytes_AS_STRING(head) + size, body, head_end - body);
    } else {
        head = Py_NewRef(Py_None);
    }
    if (shortest_case) {
        tail = PyBytes_FromStringAndSize((const char *)tail_start, tail_end - tail_start);
        if (tail == NULL) goto done;
    } else {
        tail = Py_NewRef(Py_None);
    }
    result = PyTuple_Pack(3, record, head, tail);
    got = result == NULL ? -1 : 1;
done:
    Py_XDECREF(request_id);
    Py_XDECREF(event_time);
    Py_XDECREF(use_case);
    Py_XDECREF(numeric);
    Py_XDECREF(categorical);
    Py_XDECREF(context);
    Py_XDECREF(record);
    Py_XDECREF(head);
    Py_XDECREF(tail);
    *taken = got;
    return got == 1 ? result : NULL;
}

PyDoc_STRVAR(read_request_doc,
             "read_request(data, header, answer_header, view=False) -> (record, head, tail) "
             "| None\n\n"
             "The Request record exactly as fastavro decodes it, or None when this path does "
             "not take the message (see streams/request_decoder.py). head: answer_header, "
             "then the request's request_id and event_time bytes; tail: its use_case bytes; "
             "each None unless those varints are in their shortest form. answer_header None: "
             "no head. view true: the worker's view of the record instead, {request_id, "
             "event_time, use_case, features: {**numeric_features, **categorical_features}} "
             "(streams.request_decoder.worker_view), for the same messages.");

static PyObject *read_request(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 && nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "read_request(data, header, answer_header, view=False)");
        return NULL;
    }
    int view = nargs == 4 ? PyObject_IsTrue(args[3]) : 0;
    if (view < 0) return NULL;
    PyObject *data = args[0], *header = args[1], *answer_header = args[2];
    if (!PyBytes_CheckExact(header) ||
        (answer_header != Py_None && !PyBytes_CheckExact(answer_header))) {
        PyErr_SetString(PyExc_TypeError, "header and answer_header must be bytes");
        return NULL;
    }
    if (!PyBytes_CheckExact(data)) Py_RETURN_NONE; /* a tombstone or a bytes subclass */
    Py_ssize_t n = PyBytes_GET_SIZE(data), h = PyBytes_GET_SIZE(header);
    const unsigned char *bytes = (const unsigned char *)PyBytes_AS_STRING(data);
    if (n < h || memcmp(bytes, PyBytes_AS_STRING(header), h) != 0) Py_RETURN_NONE;
    Reader r = {bytes + h, bytes + n};
    int taken;
    PyObject *result = read_body(&r, bytes + h, answer_header, view, &taken);
    if (taken == 1) return result;
    if (taken == 0) Py_RETURN_NONE;
    return NULL;
}

/* -- answers ----------------------------------------------------------------------------- */

/* Appends Avro's zigzag varint of a non-negative length. */
static char *put_length(char *p, Py_ssize_t size) {
    uint64_t n = (uint64_t)size << 1;
    while (n >= 0x80) {
        *p++ = (char)((n & 0x7F) | 0x80);
        n >>= 7;
    }
    *p++ = (char)n;
    return p;
}

/* One Prediction, or Py_None (a new reference either way; NULL on a Python error) when the
 * outcome is not one of the two usual shapes: an answer (value a float; label, error None;
 * scores an empty dict; latency a float), or a failure (value, label None; scores empty;
 * latency a float; error a str). streams/prediction_encoder.py's _outcome writes the same
 * bytes for them, and the rest itself. */
static PyObject *encode_answer(PyObject *head, PyObject *constant, PyObject *outcome,
                               PyObject *tail) {
    if (!PyBytes_CheckExact(head) || !PyBytes_CheckExact(tail) || !PyTuple_Check(outcome) ||
        PyTuple_GET_SIZE(outcome) != 5)
        Py_RETURN_NONE;
    PyObject *value = PyTuple_GET_ITEM(outcome, 0), *label = PyTuple_GET_ITEM(outcome, 1),
             *scores = PyTuple_GET_ITEM(outcome, 2), *latency = PyTuple_GET_ITEM(outcome, 3),
             *error = PyTuple_GET_ITEM(outcome, 4);
    if (label != Py_None || !PyDict_CheckExact(scores) || PyDict_GET_SIZE(scores) != 0 ||
        !PyFloat_CheckExact(latency))
        Py_RETURN_NONE;
    const char *text = NULL;
    Py_ssize_t text_size = 0, middle;
    if (PyFloat_CheckExact(value) && error == Py_None) {
        middle = 1 + 8 + 1 + 1 + 1 + 8 + 1;
    } else if (value == Py_None && PyUnicode_CheckExact(error)) {
        text = PyUnicode_AsUTF8AndSize(error, &text_size);
        if (text == NULL) { /* a lone surrogate: fastavro's to refuse */
            PyErr_Clear();
            Py_RETURN_NONE;
        }
        middle = 1 + 1 + 1 + 1 + 8 + 1 + 10 + text_size;
    } else {
        Py_RETURN_NONE;
    }
    Py_ssize_t h = PyBytes_GET_SIZE(head), c = PyBytes_GET_SIZE(constant),
               t = PyBytes_GET_SIZE(tail);
    PyObject *out = PyBytes_FromStringAndSize(NULL, h + c + middle + t);
    if (out == NULL) return NULL;
    char *start = PyBytes_AS_STRING(out), *p = start;
    memcpy(p, PyBytes_AS_STRING(head), h);
    p += h;
    memcpy(p, PyBytes_AS_STRING(constant), c);
    p += c;
    if (text == NULL) {
        *p++ = 2; /* value: the double branch */
        if (PyFloat_Pack8(PyFloat_AS_DOUBLE(value), p, 1) < 0) goto failed;
        p += 8;
        *p++ = 0; /* label null */
        *p++ = 0; /* scores: no entries */
        *p++ = 2; /* latency_ms: the double branch */
        if (PyFloat_Pack8(PyFloat_AS_DOUBLE(latency), p, 1) < 0) goto failed;
        p += 8;
        *p++ = 0; /* error null */
    } else {
        *p++ = 0; /* value null */
        *p++ = 0; /* label null */
        *p++ = 0; /* scores: no entries */
        *p++ = 2; /* latency_ms */
        if (PyFloat_Pack8(PyFloat_AS_DOUBLE(latency), p, 1) < 0) goto failed;
        p += 8;
        *p++ = 2; /* error: the string branch */
        p = put_length(p, text_size);
        memcpy(p, text, text_size);
        p += text_size;
    }
    memcpy(p, PyBytes_AS_STRING(tail), t);
    p += t;
    if (_PyBytes_Resize(&out, p - start) < 0) return NULL;
    return out;
failed:
    Py_DECREF(out);
    return NULL;
}

PyDoc_STRVAR(encode_answers_doc,
             "encode_answers(heads, constant, outcomes, tails) -> list[bytes | None]\n\n"
             "One Prediction per outcome: head + constant + the outcome's fields + tail, as "
             "streams/prediction_encoder.py writes them; None where a head or tail is not "
             "bytes or the outcome is not an answer or a failure of the usual shape.");

static PyObject *encode_answers(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyList_CheckExact(args[0]) || !PyBytes_CheckExact(args[1]) ||
        !PyList_CheckExact(args[2]) || !PyList_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError,
                        "encode_answers(heads: list, constant: bytes, outcomes: list, "
                        "tails: list)");
        return NULL;
    }
    PyObject *heads = args[0], *constant = args[1], *outcomes = args[2], *tails = args[3];
    Py_ssize_t n = PyList_GET_SIZE(outcomes);
    if (PyList_GET_SIZE(heads) != n || PyList_GET_SIZE(tails) != n) {
        PyErr_SetString(PyExc_ValueError, "heads, outcomes and tails differ in length");
        return NULL;
    }
    PyObject *out = PyList_New(n);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *one = encode_answer(PyList_GET_ITEM(heads, i), constant,
                                      PyList_GET_ITEM(outcomes, i), PyList_GET_ITEM(tails, i));
        if (one == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, one);
    }
    return out;
}

/* -- sample points ----------------------------------------------------------------------- */

/* BLAKE2b with an 8-byte digest and no key, written from RFC 7693 (section 3 and the
 * parameter block of the BLAKE2 paper): what hashlib.blake2b(data, digest_size=8) gives,
 * which streams/models.py's sample_points() uses. tests/unit/test_models.py compares them. */
static const uint64_t blake2b_iv[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL,
    0xa54ff53a5f1d36f1ULL, 0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL,
    0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

static const uint8_t blake2b_sigma[10][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
};

static inline uint64_t rotr64(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }

static inline uint64_t load64(const unsigned char *p) {
    uint64_t x = 0;
    for (int i = 7; i >= 0; i--) x = (x << 8) | p[i];
    return x;
}

#define G(a, b, c, d, x, y)           \
    do {                              \
        v[a] = v[a] + v[b] + (x);     \
        v[d] = rotr64(v[d] ^ v[a], 32); \
        v[c] = v[c] + v[d];           \
        v[b] = rotr64(v[b] ^ v[c], 24); \
        v[a] = v[a] + v[b] + (y);     \
        v[d] = rotr64(v[d] ^ v[a], 16); \
        v[c] = v[c] + v[d];           \
        v[b] = rotr64(v[b] ^ v[c], 63); \
    } while (0)

static void blake2b_compress(uint64_t h[8], const unsigned char block[128], uint64_t t,
                             int last) {
    uint64_t v[16], m[16];
    for (int i = 0; i < 16; i++) m[i] = load64(block + 8 * i);
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = blake2b_iv[i];
    }
    v[12] ^= t; /* the counter's high word stays 0: no key is ever 2^64 bytes */
    if (last) v[14] = ~v[14];
    for (int round = 0; round < 12; round++) {
        const uint8_t *s = blake2b_sigma[round % 10];
        G(0, 4, 8, 12, m[s[0]], m[s[1]]);
        G(1, 5, 9, 13, m[s[2]], m[s[3]]);
        G(2, 6, 10, 14, m[s[4]], m[s[5]]);
        G(3, 7, 11, 15, m[s[6]], m[s[7]]);
        G(0, 5, 10, 15, m[s[8]], m[s[9]]);
        G(1, 6, 11, 12, m[s[10]], m[s[11]]);
        G(2, 7, 8, 13, m[s[12]], m[s[13]]);
        G(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    for (int i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
}

/* The first 8 bytes of BLAKE2b-64(data), read as a big-endian integer (int.from_bytes's
 * default order, as sample_points reads the digest). */
static uint64_t blake2b_64(const unsigned char *data, Py_ssize_t size) {
    uint64_t h[8];
    memcpy(h, blake2b_iv, sizeof h);
    h[0] ^= 0x01010000ULL ^ 8; /* depth 1, fanout 1, no key, an 8-byte digest */
    uint64_t done = 0;
    while (size > 128) {
        done += 128;
        blake2b_compress(h, data, done, 0);
        data += 128;
        size -= 128;
    }
    unsigned char last[128] = {0};
    memcpy(last, data, size);
    blake2b_compress(h, last, done + size, 1);
    uint64_t big = 0;
    for (int i = 0; i < 8; i++) big = (big << 8) | ((h[0] >> (8 * i)) & 0xFF);
    return big;
}

PyDoc_STRVAR(sample_points_doc,
             "sample_points(keys: list[str]) -> list[float]\n\n"
             "int.from_bytes(blake2b(key.encode(), digest_size=8).digest()) / 2**64 of each "
             "key: streams/models.py's sample_points, in C.");

static PyObject *sample_points(PyObject *module, PyObject *keys) {
    if (!PyList_CheckExact(keys)) {
        PyErr_SetString(PyExc_TypeError, "sample_points(keys: list[str])");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(keys);
    PyObject *out = PyList_New(n);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *key = PyList_GET_ITEM(keys, i);
        Py_ssize_t size;
        const char *utf8 = PyUnicode_Check(key) ? PyUnicode_AsUTF8AndSize(key, &size) : NULL;
        if (utf8 == NULL) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "a key is not a str");
            Py_DECREF(out);
            return NULL;
        }
        /* int -> float rounds to nearest, as Python's int.__truediv__ does here: a uint64
         * converted by the C compiler, then scaled exactly by a power of two */
        double point = (double)blake2b_64((const unsigned char *)utf8, size) / 18446744073709551616.0;
        PyObject *f = PyFloat_FromDouble(point);
        if (f == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, f);
    }
    return out;
}

/* -- outcomes ---------------------------------------------------------------------------- */

PyDoc_STRVAR(float_outcomes_doc,
             "float_outcomes(outcome_type, no_scores, outputs: list, latencies: list) -> "
             "list | None\n\n"
             "outcome_type((output, None, no_scores, latency, None)) for each pair, when "
             "every output is a finite float and every latency a float: the answers "
             "streams/models.py's to_outcomes makes in its loop, made here; None (nothing "
             "made) when any pair is something else, and to_outcomes makes them all.");

static PyObject *float_outcomes(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyType_Check(args[0]) || !PyList_CheckExact(args[2]) ||
        !PyList_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError,
                        "float_outcomes(outcome_type, no_scores, outputs: list, latencies: list)");
        return NULL;
    }
    PyTypeObject *type = (PyTypeObject *)args[0];
    PyObject *no_scores = args[1], *outputs = args[2], *latencies = args[3];
    /* a tuple subclass with no fields of its own (a NamedTuple), as tuple.__new__ makes */
    if (!PyType_IsSubtype(type, &PyTuple_Type) || type->tp_basicsize != PyTuple_Type.tp_basicsize) {
        PyErr_SetString(PyExc_TypeError, "outcome_type must be a NamedTuple class");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(outputs);
    if (PyList_GET_SIZE(latencies) != n) {
        PyErr_SetString(PyExc_ValueError, "outputs and latencies differ in length");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *output = PyList_GET_ITEM(outputs, i);
        if (!PyFloat_CheckExact(output) || !isfinite(PyFloat_AS_DOUBLE(output)) ||
            !PyFloat_CheckExact(PyList_GET_ITEM(latencies, i)))
            Py_RETURN_NONE;
    }
    PyObject *out = PyList_New(n);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *outcome = type->tp_alloc(type, 5);
        if (outcome == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(outcome, 0, Py_NewRef(PyList_GET_ITEM(outputs, i)));
        PyTuple_SET_ITEM(outcome, 1, Py_NewRef(Py_None));
        PyTuple_SET_ITEM(outcome, 2, Py_NewRef(no_scores));
        PyTuple_SET_ITEM(outcome, 3, Py_NewRef(PyList_GET_ITEM(latencies, i)));
        PyTuple_SET_ITEM(outcome, 4, Py_NewRef(Py_None));
        PyList_SET_ITEM(out, i, outcome);
    }
    return out;
}

static PyMethodDef methods[] = {
    {"sample_points", (PyCFunction)sample_points, METH_O, sample_points_doc},
    {"encode_answers", (PyCFunction)(void (*)(void))encode_answers, METH_FASTCALL,
     encode_answers_doc},
    {"read_request", (PyCFunction)(void (*)(void))read_request, METH_FASTCALL,
     read_request_doc},
    {"float_outcomes", (PyCFunction)(void (*)(void))float_outcomes, METH_FASTCALL,
     float_outcomes_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "streams._speedups",
    "The shadow worker's Request decode and Prediction encode, compiled.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    k_request_id = PyUnicode_InternFromString("request_id");
    k_event_time = PyUnicode_InternFromString("event_time");
    k_use_case = PyUnicode_InternFromString("use_case");
    k_numeric = PyUnicode_InternFromString("numeric_features");
    k_categorical = PyUnicode_InternFromString("categorical_features");
    k_context = PyUnicode_InternFromString("context");
    k_features = PyUnicode_InternFromString("features");
    if (!k_request_id || !k_event_time || !k_use_case || !k_numeric || !k_categorical ||
        !k_context || !k_features)
        return NULL;
    return PyModule_Create(&module_def);
}
