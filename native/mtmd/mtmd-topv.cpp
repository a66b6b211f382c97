// mtmd-topv.cpp - visual-token pruning inside llama.cpp's mtmd decode path: probe, pass, decode of the kept tokens.
//
// Part of topv-edge, compiled into libmtmd (mtmd-topv.cmake). The pass itself (topv_select) is native/src; which
// chunks are pruned and how their tokens form a grid is the layout table's (mtmd-topv-layouts.cpp).

#include "mtmd-topv-impl.h"
#include "mtmd-helper-common.h"

#include "ggml-backend.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

static double topv_ms_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

//
// public parameters and results
//

struct mtmd_topv_params mtmd_topv_default_params(void) {
    mtmd_topv_params p;
    p.enabled    = false;
    p.keep_ratio = 0.25f;
    p.keep_count = 0;
    p.layer      = 0; // with the default method (divprune) no probe runs at all (docs/pass.md, "Decision")
    p.pass       = topv_default_params();
    p.renumber_positions = false;
    p.overview_weight = INFINITY; // tiled pictures: the overview whole, the tiles share the rest (docs/tiled.md)
    return p;
}

int32_t mtmd_topv_set_params(mtmd_context * ctx, const mtmd_topv_params * params) {
    if (!ctx || !params) {
        return TOPV_STATUS_NULL_ARGUMENT;
    }
    const bool ratio_ok = params->keep_ratio > 0.0f && params->keep_ratio <= 1.0f; // false for NaN too
    if (params->keep_count < 0 || (params->keep_count == 0 && !ratio_ok)) {
        return TOPV_STATUS_BAD_KEEP;
    }
    if (params->layer < 0 || !(params->overview_weight > 0.0f)) { // a weight of NaN fails too; INFINITY keeps the overview whole
        return TOPV_STATUS_BAD_PARAM;
    }
    const int32_t st = topv_check_params(params->pass);
    if (st != TOPV_STATUS_OK) {
        return st;
    }
    mtmd_topv_state_of(ctx)->params = *params;
    return TOPV_STATUS_OK;
}

struct mtmd_topv_params mtmd_topv_get_params(const mtmd_context * ctx) {
    return ctx ? mtmd_topv_state_of(ctx)->params : mtmd_topv_default_params();
}

int32_t mtmd_topv_enable(mtmd_context * ctx, const llama_model * model, float keep_ratio, int32_t keep_count,
                         int32_t layer, const char * method) {
    if (layer < 0) {
        layer = mtmd_topv_default_params().layer; // the command lines' "not given"
    }
    if (model && layer >= llama_model_n_layer(model) - 1) {
        LOG_ERR("topv: layer %d is out of range: this model has %d layers, so the probe layer must be 0..%d\n",
                layer, llama_model_n_layer(model), llama_model_n_layer(model) - 2);
        return TOPV_STATUS_BAD_PARAM;
    }
    if (model) {
        char why[512];
        if (mtmd_topv_check_model(ctx, model, why, sizeof(why)) != 0) {
            LOG_WRN("topv: %s\n", why);
        }
    }
    mtmd_topv_params p = mtmd_topv_default_params();
    p.enabled     = true;
    p.keep_ratio  = keep_ratio;
    p.keep_count  = keep_count;
    p.layer       = layer;
    if (method && method[0]) {
        p.pass.method = topv_method_from_name(method);
        if (p.pass.method < 0) {
            std::string known;
            for (int32_t m = 0; topv_method_name(m); m++) {
                known += std::string(m ? ", " : "") + topv_method_name(m);
            }
            LOG_ERR("topv: unknown method '%s' (known: %s)\n", method, known.c_str());
            return TOPV_STATUS_BAD_PARAM;
        }
    }
    const int32_t ret = mtmd_topv_set_params(ctx, &p);
    if (ret != 0) {
        LOG_ERR("topv: invalid parameters: %s\n", topv_status_string(ret));
    } else {
        char line[256];
        LOG_INF("%s\n", mtmd_topv_format_params(ctx, line, sizeof(line)));
    }
    return ret;
}

const char * mtmd_topv_format_params(const mtmd_context * ctx, char * buf, size_t size) {
    if (!buf || size == 0) {
        return buf;
    }
    const mtmd_topv_params p = mtmd_topv_get_params(ctx);
    const char * method = topv_method_name(p.pass.method) ? topv_method_name(p.pass.method) : "unknown method";
    if (!p.enabled) {
        snprintf(buf, size, "topv: pruning is off");
    } else if (p.keep_count > 0) {
        snprintf(buf, size, "topv: pruning images to %d tokens at layer %d (%s)", p.keep_count, p.layer, method);
    } else {
        snprintf(buf, size, "topv: pruning images to %.3g of their tokens at layer %d (%s)", p.keep_ratio, p.layer, method);
    }
    return buf;
}

const char * mtmd_topv_result_string(int32_t result) {
    switch (result) {
        case MTMD_TOPV_PRUNED:             return "pruned";
        case MTMD_TOPV_DISABLED:           return "pruning is off";
        case MTMD_TOPV_KEEP_ALL:           return "keep covers every token";
        case MTMD_TOPV_UNSUPPORTED_LAYOUT: return "the image's token layout is not one the stage prunes";
        case MTMD_TOPV_UBATCH_TOO_SMALL:   return "the image has more tokens than n_batch/n_ubatch (the probe needs the whole image in one ubatch)";
        case MTMD_TOPV_LAYER_OUT_OF_RANGE: return "the TopV layer must be below the model's last layer";
        case MTMD_TOPV_PROBE_FAILED:       return "the probe did not see the layer's features";
        case MTMD_TOPV_PASS_FAILED:        return "the TopV pass failed";
        default:                           return "unknown result";
    }
}

const char * mtmd_topv_chunk_role_name(int32_t role) {
    switch (role) {
        case MTMD_TOPV_CHUNK_SINGLE:   return "single";
        case MTMD_TOPV_CHUNK_OVERVIEW: return "overview";
        case MTMD_TOPV_CHUNK_TILE:     return "tile";
        default:                       return "unknown";
    }
}

//
// tiled pictures: where each chunk sits, and its share of the picture's budget
//

void mtmd_topv_place_picture(mtmd_topv_picture_place * const * places, const uint32_t * n_tokens, size_t n_chunks,
                             int32_t tiles_x, int32_t tiles_y, bool overview_first, int32_t picture) {
    if (!places || !n_tokens || n_chunks == 0) {
        return;
    }
    int32_t total = 0;
    for (size_t i = 0; i < n_chunks; i++) {
        total += (int32_t) n_tokens[i];
    }
    const size_t n_tiles = (size_t) std::max(0, tiles_x) * (size_t) std::max(0, tiles_y);
    // an overview and its tiles; anything else (an overview alone: a picture too small to tile) is a single chunk
    // each, with a budget of its own
    const bool tiled = n_chunks >= 2 && n_chunks == n_tiles + 1;
    const size_t ov  = overview_first ? 0 : n_chunks - 1;
    int32_t tiles_before = 0;
    size_t  t = 0;
    for (size_t i = 0; i < n_chunks; i++) {
        mtmd_topv_picture_place & p = *places[i];
        p = mtmd_topv_picture_place{};
        p.picture = picture;
        if (!tiled) {
            p.n_picture_tokens = (int32_t) n_tokens[i];
            continue;
        }
        p.index             = (int32_t) i;
        p.n_chunks          = (int32_t) n_chunks;
        p.n_picture_tokens  = total;
        p.tiles_x           = tiles_x;
        p.tiles_y           = tiles_y;
        p.n_overview_tokens = (int32_t) n_tokens[ov];
        if (i == ov) {
            p.role = MTMD_TOPV_CHUNK_OVERVIEW;
        } else {
            p.role   = MTMD_TOPV_CHUNK_TILE;
            p.tile_x = (int32_t) (t % (size_t) tiles_x);
            p.tile_y = (int32_t) (t / (size_t) tiles_x);
            p.n_tile_tokens_before = tiles_before;
            tiles_before += (int32_t) n_tokens[i];
            t++;
        }
    }
}

// round(a * b / c), half up, for a, b, c >= 0 and c > 0
static int64_t topv_mul_div_round(int64_t a, int64_t b, int64_t c) {
    return (2 * a * b + c) / (2 * c);
}

int64_t mtmd_topv_chunk_budget(const mtmd_topv_params & prm, const mtmd_topv_chunk_layout & layout) {
    return mtmd_topv_chunk_budget(prm, layout.place, (int64_t) layout.grid_tokens.size(),
                                  (int64_t) layout.always_kept.size());
}

int64_t mtmd_topv_chunk_budget(const mtmd_topv_params & prm, const mtmd_topv_picture_place & pl, int64_t n_grid,
                               int64_t n_always_kept) {
    auto keep_of = [&](int64_t n) {
        return prm.keep_count > 0 ? std::min<int64_t>(prm.keep_count, n) : topv_keep_count(n, prm.keep_ratio);
    };
    if (pl.role == MTMD_TOPV_CHUNK_SINGLE || pl.n_chunks < 2 || pl.n_picture_tokens < 1 || n_grid < 1) {
        return keep_of(n_grid);
    }
    // one budget for the picture: the overview gets its tokens' weighted share (at least one token), the tiles
    // split the rest in proportion to their tokens; cumulative rounding makes the tiles' shares add up exactly
    const int64_t n_all  = pl.n_picture_tokens;
    const int64_t n_ov   = pl.n_overview_tokens;
    const int64_t n_tile = n_all - n_ov;
    const int64_t budget = keep_of(n_all);
    int64_t k_ov = 0;
    if (n_ov > 0) {
        const double w     = prm.overview_weight;
        const double share = std::isinf(w) || n_tile == 0 ? 1.0 : w * (double) n_ov / (w * (double) n_ov + (double) n_tile);
        k_ov = std::min(std::max<int64_t>(std::llround((double) budget * share), 1), std::min(n_ov, budget));
    }
    int64_t k;
    if (pl.role == MTMD_TOPV_CHUNK_OVERVIEW) {
        k = k_ov;
    } else {
        const int64_t rest   = std::max<int64_t>(budget - k_ov, 0);
        const int64_t n_self = n_grid + n_always_kept;
        const int64_t before = pl.n_tile_tokens_before;
        k = n_tile > 0 ? topv_mul_div_round(rest, before + n_self, n_tile) - topv_mul_div_round(rest, before, n_tile) : 0;
    }
    return std::min(std::max<int64_t>(k, 1), n_grid); // every chunk keeps at least one token
}

// facts with the same layout: all but the place in the picture, which the layout only carries along (so the
// tiles of a picture, and its repeats in a prompt, share one memo entry)
static bool topv_same_layout_facts(const mtmd_topv_image_facts & a, const mtmd_topv_image_facts & b) {
    return a.ctx_v == b.ctx_v && a.proj_type == b.proj_type && a.pos_type == b.pos_type && a.nx == b.nx &&
           a.ny == b.ny && a.n_tokens == b.n_tokens && a.n_temporal_merge == b.n_temporal_merge &&
           a.n_entries == b.n_entries && a.entry_nx == b.entry_nx && a.entry_ny == b.entry_ny;
}

// the layout counts of a chunk of these facts: from the memo, or resolved once and remembered
static mtmd_topv_layout_counts topv_layout_counts(const mtmd_topv_state & st, const mtmd_topv_image_facts & facts,
                                                  const llama_model * model) {
    std::lock_guard<std::mutex> lock(st.layout_memo_mutex);
    for (const mtmd_topv_layout_counts & c : st.layout_memo) {
        if (c.model == model && topv_same_layout_facts(c.facts, facts)) {
            return c;
        }
    }
    mtmd_topv_layout_counts c;
    c.facts = facts;
    c.model = model;
    mtmd_topv_chunk_layout layout;
    c.prunable = mtmd_topv_resolve_layout(facts, model, &layout, nullptr);
    c.n_grid        = (int32_t) layout.grid_tokens.size();
    c.n_always_kept = (int32_t) layout.always_kept.size();
    if (st.layout_memo.size() >= 16) {
        st.layout_memo.erase(st.layout_memo.begin());
    }
    st.layout_memo.push_back(c);
    return c;
}

int32_t mtmd_topv_chunk_n_kept(const mtmd_context * ctx, const llama_model * model, const mtmd_input_chunk * chunk) {
    if (!ctx || !chunk || mtmd_input_chunk_get_type(chunk) != MTMD_INPUT_CHUNK_TYPE_IMAGE) {
        return -1;
    }
    const int32_t n_tokens = (int32_t) mtmd_input_chunk_get_n_tokens(chunk);
    const mtmd_topv_state & st = *mtmd_topv_state_of(ctx);
    const mtmd_image_tokens * img = mtmd_input_chunk_get_tokens_image(chunk);
    mtmd_topv_image_facts facts{};
    if (!st.params.enabled || !img || !model || !mtmd_topv_image_facts_of(ctx, img, &facts)) {
        return n_tokens;
    }
    const mtmd_topv_layout_counts c = topv_layout_counts(st, facts, model);
    if (!c.prunable) {
        return n_tokens;
    }
    const int64_t k = mtmd_topv_chunk_budget(st.params, facts.place, c.n_grid, c.n_always_kept);
    if (k < 1 || k >= c.n_grid) {
        return n_tokens;
    }
    return (int32_t) k + c.n_always_kept;
}

// whether lctx makes the stage decode an image chunk whole that it would otherwise prune, and why (*result,
// *reason, when given: the cell count asks on every generated token and needs no sentence): the TopV layer must
// lie below the model's last, and a probe needs the whole image in one batch and one ubatch. The stage's plan and
// the cell count (mtmd_topv_chunk_n_cells) share this rule.
static bool topv_decoded_whole_in(const llama_context * lctx, const mtmd_topv_params & prm, bool probed,
                                  int32_t n_tokens, mtmd_topv_result * result, std::string * reason) {
    const int32_t n_layer = llama_model_n_layer(llama_get_model(lctx));
    if (prm.layer >= n_layer - 1) {
        if (result && reason) {
            *result = MTMD_TOPV_LAYER_OUT_OF_RANGE;
            *reason = "the TopV layer " + std::to_string(prm.layer) + " must be below the model's last layer (0.." +
                      std::to_string(n_layer - 2) + ")";
        }
        return true;
    }
    const uint32_t n_ubatch = llama_n_ubatch(lctx), n_batch = llama_n_batch(lctx);
    if (probed && ((int32_t) n_ubatch < n_tokens || (int32_t) n_batch < n_tokens)) {
        if (result && reason) {
            *result = MTMD_TOPV_UBATCH_TOO_SMALL;
            *reason = "the image has " + std::to_string(n_tokens) + " tokens, more than n_batch " +
                      std::to_string(n_batch) + " / n_ubatch " + std::to_string(n_ubatch) +
                      " (the probe needs the whole image in one ubatch)";
        }
        return true;
    }
    return false;
}

int32_t mtmd_topv_chunk_n_cells(const mtmd_context * ctx, const llama_context * lctx, const mtmd_input_chunk * chunk) {
    if (!lctx) {
        return -1;
    }
    const int32_t n_kept = mtmd_topv_chunk_n_kept(ctx, llama_get_model(lctx), chunk); // -1: no ctx, not an image
    if (n_kept < 0) {
        return -1;
    }
    const int32_t n_tokens = (int32_t) mtmd_input_chunk_get_n_tokens(chunk);
    if (n_kept >= n_tokens) {
        return n_tokens;
    }
    const bool whole = topv_decoded_whole_in(lctx, mtmd_topv_state_of(ctx)->params, mtmd_topv_probes(ctx), n_tokens,
                                             nullptr, nullptr);
    return whole ? n_tokens : n_kept;
}

bool mtmd_topv_probes(const mtmd_context * ctx) {
    if (!ctx) {
        return false;
    }
    const mtmd_topv_params & prm = mtmd_topv_state_of(ctx)->params;
    return prm.enabled && (prm.layer > 0 || (topv_method_reads(prm.pass.method) & TOPV_READS_TARGET));
}

struct mtmd_topv_stats mtmd_topv_get_stats(const mtmd_context * ctx) {
    return ctx ? mtmd_topv_state_of(ctx)->stats : mtmd_topv_stats{};
}

const char * mtmd_topv_get_reason(const mtmd_context * ctx) {
    if (!ctx) {
        return "no mtmd context";
    }
    const mtmd_topv_state * st = mtmd_topv_state_of(ctx);
    return st->reason.empty() ? mtmd_topv_result_string(st->stats.result) : st->reason.c_str();
}

const char * mtmd_topv_format_stats(const mtmd_context * ctx, char * buf, size_t size) {
    if (!buf || size == 0) {
        return buf;
    }
    const mtmd_topv_stats s = mtmd_topv_get_stats(ctx);
    char where[96] = "image";
    if (s.role == MTMD_TOPV_CHUNK_TILE) {
        snprintf(where, sizeof(where), "tile (%d, %d) of %dx%d, chunk %d/%d of a %d-token picture,", s.tile_x, s.tile_y,
                 s.tiles_x, s.tiles_y, s.chunk_index + 1, s.n_chunks, s.n_picture_tokens);
    } else if (s.role == MTMD_TOPV_CHUNK_OVERVIEW) {
        snprintf(where, sizeof(where), "overview, chunk %d/%d of a %d-token picture,", s.chunk_index + 1, s.n_chunks,
                 s.n_picture_tokens);
    }
    if (s.result == MTMD_TOPV_PRUNED) {
        snprintf(buf, size, "topv: %s %dx%d: %d tokens -> %d kept (layer %d), probe %.1f ms, pass %.1f ms, decode %.1f ms",
                 where, s.grid_w, s.grid_h, s.n_tokens, s.n_kept, mtmd_topv_get_params(ctx).layer, s.probe_ms, s.pass_ms, s.decode_ms);
    } else {
        snprintf(buf, size, "topv: %s of %d tokens decoded unpruned (%s), decode %.1f ms",
                 where, s.n_tokens, mtmd_topv_get_reason(ctx), s.decode_ms);
    }
    return buf;
}

static bool topv_last_pruned(const mtmd_context * ctx) {
    return ctx && mtmd_topv_state_of(ctx)->stats.result == MTMD_TOPV_PRUNED;
}

const int32_t * mtmd_topv_get_kept(const mtmd_context * ctx) {
    return topv_last_pruned(ctx) ? mtmd_topv_state_of(ctx)->kept.data() : nullptr;
}

const double * mtmd_topv_get_scores(const mtmd_context * ctx) {
    return topv_last_pruned(ctx) ? mtmd_topv_state_of(ctx)->scores.data() : nullptr;
}

const float * mtmd_topv_get_features(const mtmd_context * ctx, bool target) {
    if (!topv_last_pruned(ctx)) {
        return nullptr;
    }
    const mtmd_topv_state * st = mtmd_topv_state_of(ctx);
    if (target && st->target.empty()) {
        return nullptr; // no probe ran (layer 0, a method that reads no target)
    }
    return target ? st->target.data() : st->source.data();
}

void mtmd_topv_note_unpruned(mtmd_context * ctx, double decode_ms) {
    mtmd_topv_state_of(ctx)->stats.decode_ms = decode_ms;
}

//
// the probe: a graph of layers 0..Li+1 only (llama_set_n_layer_limit), whose layer input and post-attention norm
// output of layer Li an eval callback copies out
//

struct topv_probe {
    std::string source_name; // "l_out-<Li-1>" ("deepstack_out-<Li-1>" after a deepstack add), empty when Li = 0 (the embeddings)
    std::string target_name; // "ffn_norm-<Li>" (the architecture's post-attention norm: mtmd_topv_probe_nodes)
    int64_t n_tokens = 0;
    int64_t n_embd   = 0;
    float * source   = nullptr; // n_tokens x n_embd: every token of the chunk, structural ones included
    float * target   = nullptr;
    bool got_source  = false;
    bool got_target  = false;
    bool bad_shape   = false;
    int32_t max_layer = -1; // highest "-<il>" of the nodes the scheduler computed (stats.probe_max_layer)
};

// the layer of a graph node named "<name>-<il>" (llama.cpp's graph callback; views and reshapes append " (...)"), or -1
static int32_t topv_node_layer(const char * name) {
    const char * end = strchr(name, ' ');
    end = end ? end : name + strlen(name);
    const char * p = end;
    while (p > name && p[-1] >= '0' && p[-1] <= '9') {
        p--;
    }
    if (p == end || p == name || p[-1] != '-' || end - p > 6) {
        return -1;
    }
    return (int32_t) strtol(p, nullptr, 10);
}

static bool topv_probe_eval_cb(struct ggml_tensor * t, bool ask, void * user_data) {
    auto * p = static_cast<topv_probe *>(user_data);
    const bool is_source = !p->got_source && !p->source_name.empty() && p->source_name == t->name;
    const bool is_target = !p->got_target && p->target_name == t->name;
    if (ask) {
        // the scheduler asks about every node before it computes it
        p->max_layer = std::max(p->max_layer, topv_node_layer(t->name));
        return is_source || is_target; // only these nodes need to be computed and handed to us
    }
    if (!is_source && !is_target) {
        return true;
    }
    if (t->type != GGML_TYPE_F32 || t->ne[0] != p->n_embd || t->ne[1] != p->n_tokens || !ggml_is_contiguous(t)) {
        p->bad_shape = true;
        return false;
    }
    ggml_backend_tensor_get(t, is_source ? p->source : p->target, 0, ggml_nbytes(t));
    (is_source ? p->got_source : p->got_target) = true;
    // after the target (which comes after the source) the rest of this split is not needed: false skips it. The
    // layer limit bounds what the other splits (other backends of a partial offload) compute.
    return !p->got_target;
}

// the context's eval callback and layer limit, put back on every exit path
struct topv_probe_scope {
    llama_context * lctx;
    ggml_backend_sched_eval_callback eval_cb = nullptr;
    void *   eval_ud     = nullptr;
    uint32_t layer_limit = 0;

    topv_probe_scope(llama_context * lctx, topv_probe * probe, uint32_t n_layer) : lctx(lctx) {
        llama_get_eval_callback(lctx, &eval_cb, &eval_ud);
        layer_limit = llama_get_n_layer_limit(lctx);
        llama_set_eval_callback(lctx, topv_probe_eval_cb, probe);
        llama_set_n_layer_limit(lctx, n_layer);
    }
    ~topv_probe_scope() {
        llama_set_eval_callback(lctx, eval_cb, eval_ud);
        llama_set_n_layer_limit(lctx, layer_limit);
    }
};

// same as the helper's: non-causal attention for the image when the model wants it (Gemma 3)
struct topv_scope_non_causal {
    llama_context * lctx;
    bool enabled;
    topv_scope_non_causal(llama_context * lctx, bool enabled) : lctx(lctx), enabled(enabled) {
        if (enabled) {
            llama_set_causal_attn(lctx, false);
        }
    }
    ~topv_scope_non_causal() {
        if (enabled) {
            llama_set_causal_attn(lctx, true);
        }
    }
};

// positions of chunk tokens idx[0..n) (all tokens when idx is null): their original ones, so pruned tokens leave gaps
static void topv_fill_positions(decode_embd_batch & batch, const mtmd_input_chunk * chunk, mtmd_context * ctx,
                                llama_pos n_past, llama_seq_id seq_id, const int32_t * idx, int32_t n,
                                bool renumber = false) {
    batch.seq_id = seq_id;
    if (mtmd_decode_use_mrope(ctx)) {
        const mtmd_image_tokens * image_tokens = mtmd_input_chunk_get_tokens_image(chunk);
        for (int32_t j = 0; j < n; j++) {
            const mtmd_decoder_pos p = mtmd_image_tokens_get_decoder_pos(image_tokens, n_past, idx ? idx[j] : j);
            batch.pos[(size_t) j                  ] = p.t; // section-major: t, y, x, z
            batch.pos[(size_t) j + (size_t) n     ] = p.y;
            batch.pos[(size_t) j + (size_t) n * 2 ] = p.x;
            batch.pos[(size_t) j + (size_t) n * 3 ] = p.z;
        }
    } else {
        for (int32_t j = 0; j < n; j++) {
            batch.pos[j] = n_past + ((idx && !renumber) ? idx[j] : j);
        }
    }
}

// the stats of a chunk before anything is decided: where it sits in its picture, all its tokens, no result yet
static void topv_begin_stats(mtmd_topv_state & st, const mtmd_topv_image_facts * facts, int32_t n_tokens, int32_t n_embd) {
    st.stats = {};
    st.stats.probe_max_layer = -1;
    st.stats.picture  = -1;
    st.stats.tile_x   = -1;
    st.stats.tile_y   = -1;
    st.stats.n_chunks = 1;
    st.stats.n_picture_tokens = n_tokens;
    st.stats.n_frames = 1;
    if (facts) { // where the chunk sits, also when it is not pruned
        const mtmd_topv_picture_place & pl = facts->place;
        st.stats.n_frames = mtmd_topv_merged_frames(*facts);
        st.stats.picture = pl.picture;
        st.stats.role    = pl.role;
        st.stats.tile_x  = pl.tile_x;
        st.stats.tile_y  = pl.tile_y;
        st.stats.tiles_x = pl.tiles_x;
        st.stats.tiles_y = pl.tiles_y;
        st.stats.chunk_index = pl.index;
        st.stats.n_chunks    = pl.n_chunks;
        st.stats.n_picture_tokens = pl.n_picture_tokens > 0 ? pl.n_picture_tokens : n_tokens;
    }
    st.stats.n_tokens = n_tokens;
    st.stats.n_kept   = n_tokens;
    st.stats.n_embd   = n_embd;
    st.reason.clear();
}

// records why the stage does not prune the chunk (the caller then decodes it unpruned); returns false
static bool topv_decline(mtmd_topv_state & st, mtmd_topv_result why, const std::string & reason = "") {
    st.stats.result = why;
    st.reason = reason.empty() ? mtmd_topv_result_string(why) : reason;
    if (why != MTMD_TOPV_DISABLED && why != MTMD_TOPV_KEEP_ALL) {
        LOG_WRN("topv: image of %d tokens decoded unpruned: %s\n", st.stats.n_tokens, st.reason.c_str());
    }
    return false;
}

// what one image chunk's decode works on, decided before the probe
struct topv_chunk_job {
    mtmd_context *           ctx;
    llama_context *          lctx;
    const mtmd_input_chunk * chunk;
    const float *            embd;     // the chunk's embeddings, layout.row_width floats per token
    llama_pos                n_past;
    llama_seq_id             seq_id;
    int32_t                  n_tokens; // the chunk's tokens
    int32_t                  n_embd;   // width of the probed features (an embedding row may be wider: deepstack)
    int                      n_pos_per_embd;
    int64_t                  k;        // grid tokens to keep
    bool                     probed;   // whether a probe runs (not at layer 0 with a method that reads no target)
    mtmd_topv_chunk_layout   layout;
};

// every reason not to prune the chunk, in order; false (declined, the stats say why) or true with job.layout and job.k
static bool topv_plan(mtmd_topv_state & st, topv_chunk_job & job, const mtmd_topv_image_facts * facts) {
    const mtmd_topv_params & prm = st.params;
    if (!prm.enabled) {
        return topv_decline(st, MTMD_TOPV_DISABLED);
    }
    std::string why_not = "the chunk has no vision tower or image tokens";
    if (!facts || !mtmd_topv_resolve_layout(*facts, llama_get_model(job.lctx), &job.layout, &why_not)) {
        return topv_decline(st, MTMD_TOPV_UNSUPPORTED_LAYOUT, why_not);
    }
    const mtmd_topv_chunk_layout & layout = job.layout;
    const int32_t n_grid = (int32_t) layout.grid_tokens.size();
    st.stats.grid_w = layout.grid_w;
    st.stats.grid_h = layout.grid_h;
    st.stats.n_grid = n_grid;
    st.stats.n_always_kept = (int32_t) layout.always_kept.size();

    // keep applies to the grid tokens of the picture (a tiled picture's chunks share its budget); structural tokens
    // are kept on top of it
    job.k = mtmd_topv_chunk_budget(prm, layout);
    st.stats.n_budget = (int32_t) std::max<int64_t>(job.k, 0);
    if (job.k < 1) {
        return topv_decline(st, MTMD_TOPV_PASS_FAILED, "the keep count is below one token");
    }
    if (job.k >= n_grid) { // nothing to prune: the stock path, bit for bit
        return topv_decline(st, MTMD_TOPV_KEEP_ALL, layout.place.role == MTMD_TOPV_CHUNK_SINGLE ? "" :
                            "its share of the picture's budget covers all " + std::to_string(n_grid) + " tokens");
    }
    // at layer 0 the source is the embeddings themselves: a method that reads no target needs no probe at all
    // (the image prefill is then the kept decode alone, the unpruned image never needs a cell or a whole batch,
    // and there is no target buffer)
    job.probed = mtmd_topv_probes(job.ctx);
    mtmd_topv_result why     = MTMD_TOPV_PRUNED;
    std::string      because;
    if (topv_decoded_whole_in(job.lctx, prm, job.probed, job.n_tokens, &why, &because)) {
        return topv_decline(st, why, because);
    }
    return true;
}

enum class topv_probe_result {
    ok,        // source (and target) features of every chunk token are in the buffers
    declined,  // the features could not be read: decode unpruned (the stats say why)
    failed,    // the memory could not be rolled back: the decode must fail
};

// The probe: all tokens in one ubatch through layers 0..Li+1 (not just 0..Li: the last layer built is cut to the
// output rows before its FFN, so ffn_norm-<Li> would not see every token); its cells (and recurrent state) are removed
// after it, so the memory is as before. Fills source (n_tokens x n_embd) and, when probed, target.
static topv_probe_result topv_probe_chunk(mtmd_topv_state & st, const topv_chunk_job & job,
                                          std::vector<float> & source, std::vector<float> & target) {
    const mtmd_topv_params & prm = st.params;
    const mtmd_topv_chunk_layout & layout = job.layout;
    llama_context * lctx = job.lctx;
    // GPU backends compute asynchronously: wait for the work queued before the image (the text chunk ahead of
    // it), or the probe's first synchronising node would be billed for it
    llama_synchronize(lctx);
    const auto t_probe = std::chrono::steady_clock::now();
    source.assign((size_t) job.n_tokens * job.n_embd, 0.0f);
    target.assign(job.probed ? (size_t) job.n_tokens * job.n_embd : 0, 0.0f);
    topv_probe probe;
    probe.n_tokens = job.n_tokens;
    probe.n_embd   = job.n_embd;
    probe.source   = source.data();
    probe.target   = target.data();
    if (prm.layer == 0) {
        for (int32_t i = 0; i < job.n_tokens; i++) { // the layer's input: the embeddings (the first n_embd of each row)
            const float * row = job.embd + (size_t) i * layout.row_width;
            std::copy(row, row + job.n_embd, source.begin() + (size_t) i * job.n_embd);
        }
        probe.got_source = true;
    }
    if (!job.probed) {
        st.stats.probe_ms = 0.0;
        st.stats.probe_max_layer = -1;
        return topv_probe_result::ok;
    }
    mtmd_topv_probe_nodes(layout, prm.layer, &probe.source_name, &probe.target_name); // per architecture, deepstack
    // a recurrent memory (hybrid models such as Qwen3.5) cannot drop the probe's tokens again (seq_rm fails on it):
    // its part of the sequence's state is saved here and put back after the probe (the attention cells are removed)
    std::vector<uint8_t> saved_recurrent;
    if (layout.recurrent) {
        saved_recurrent.resize(llama_state_seq_get_size_ext(lctx, job.seq_id, LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY));
        if (llama_state_seq_get_data_ext(lctx, saved_recurrent.data(), saved_recurrent.size(), job.seq_id,
                                         LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY) != saved_recurrent.size()) {
            topv_decline(st, MTMD_TOPV_PROBE_FAILED, "the recurrent state could not be saved before the probe");
            return topv_probe_result::declined;
        }
    }
    int32_t probe_ret;
    {
        const topv_probe_scope scope(lctx, &probe, (uint32_t) prm.layer + 2);
        const topv_scope_non_causal non_causal(lctx, mtmd_decode_use_non_causal(job.ctx, job.chunk));
        decode_embd_batch batch(job.embd, job.n_tokens, job.n_pos_per_embd, (int) layout.row_width);
        topv_fill_positions(batch, job.chunk, job.ctx, job.n_past, job.seq_id, nullptr, job.n_tokens);
        probe_ret = llama_process(lctx, LLAMA_PROCESS_TYPE_DECODE, batch.render(lctx, 0, job.n_tokens));
    }
    // whatever happened, no cell or state of this image may stay in the memory before the real decode
    bool restored = !layout.recurrent ||
                    llama_state_seq_set_data_ext(lctx, saved_recurrent.data(), saved_recurrent.size(), job.seq_id,
                                                 LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY) == saved_recurrent.size();
    restored = llama_memory_seq_rm(llama_get_memory(lctx), job.seq_id, job.n_past, -1) && restored;
    if (!restored) { // the memory holds the probe: neither a pruned nor an unpruned decode would be right
        LOG_ERR("topv: the memory could not be rolled back after the probe\n");
        st.stats.result = MTMD_TOPV_PROBE_FAILED;
        st.reason = "the memory could not be rolled back after the probe";
        return topv_probe_result::failed;
    }
    st.stats.probe_ms = topv_ms_since(t_probe);
    st.stats.probe_max_layer = probe.max_layer;
    if (probe.max_layer > prm.layer + 1) { // still right, only slower: a graph that does not loop over n_layer
        LOG_WRN("topv: the probe of layer %d computed up to layer %d: this model's graph ignores the layer limit\n",
                prm.layer, probe.max_layer);
    }
    if (!probe.got_source || !probe.got_target || probe.bad_shape) {
        LOG_WRN("topv: probe of layer %d: llama_process returned %d, source %s, target %s%s\n", prm.layer, probe_ret,
                probe.got_source ? "seen" : "missing", probe.got_target ? "seen" : "missing",
                probe.bad_shape ? ", unexpected tensor shape" : "");
        topv_decline(st, MTMD_TOPV_PROBE_FAILED, "the probe did not see the features of layer " + std::to_string(prm.layer) +
                     " (graph nodes '" + (probe.source_name.empty() ? std::string("embeddings") : probe.source_name) +
                     "' and '" + probe.target_name + "')");
        return topv_probe_result::declined;
    }
    return topv_probe_result::ok;
}

// The pass, on the grid tokens only, at their grid cells: fills st.source/target (grid rows), st.scores, st.grid_kept
// and st.kept (the pass's choice plus every structural token, as chunk token indices, ascending). False: declined.
static bool topv_select_kept(mtmd_topv_state & st, const topv_chunk_job & job, const std::vector<float> & all_source,
                             const std::vector<float> & all_target) {
    const mtmd_topv_chunk_layout & layout = job.layout;
    const int32_t n_grid = (int32_t) layout.grid_tokens.size();
    const size_t  n_embd = (size_t) job.n_embd;
    const auto t_pass = std::chrono::steady_clock::now();
    st.source.resize((size_t) n_grid * n_embd);
    st.target.resize(job.probed ? (size_t) n_grid * n_embd : 0); // without a probe there is no target
    for (int32_t g = 0; g < n_grid; g++) {
        const size_t from = (size_t) layout.grid_tokens[g] * n_embd;
        std::copy(all_source.begin() + from, all_source.begin() + from + n_embd, st.source.begin() + (size_t) g * n_embd);
        if (job.probed) {
            std::copy(all_target.begin() + from, all_target.begin() + from + n_embd, st.target.begin() + (size_t) g * n_embd);
        }
    }
    st.grid_kept.resize((size_t) job.k);
    st.scores.resize(n_grid);
    topv_params pass = st.params.pass;
    if (!layout.spatial) { // resampler queries are no picture cells: no spatial or central-distance cost
        pass.beta  = 0.0f;
        pass.gamma = 0.0f;
    }
    const int32_t pass_ret = topv_select(st.source.data(), job.probed ? st.target.data() : nullptr, n_grid, job.n_embd,
                                         layout.pos_x.data(), layout.pos_y.data(), layout.grid_w, layout.grid_h, job.k,
                                         pass, st.grid_kept.data(), st.scores.data());
    st.stats.pass_ms = topv_ms_since(t_pass);
    if (pass_ret != TOPV_STATUS_OK) {
        return topv_decline(st, MTMD_TOPV_PASS_FAILED, std::string("the TopV pass failed: ") + topv_status_string(pass_ret));
    }
    st.kept.clear();
    for (const int32_t g : st.grid_kept) {
        st.kept.push_back(layout.grid_tokens[g]);
    }
    st.kept.insert(st.kept.end(), layout.always_kept.begin(), layout.always_kept.end());
    std::sort(st.kept.begin(), st.kept.end());
    return true;
}

// Decodes the kept tokens (whole rows) at their original positions, in n_batch sub-batches, each handed to the
// post-decode callback; returns 0 or the failing call's result
static int32_t topv_decode_kept(mtmd_topv_state & st, const topv_chunk_job & job, int32_t n_batch,
                                mtmd_helper_post_decode_callback callback, void * user_data) {
    llama_context * lctx = job.lctx;
    const auto t_decode = std::chrono::steady_clock::now();
    const int32_t n_kept = (int32_t) st.kept.size();
    const size_t row = (size_t) job.layout.row_width;
    st.kept_embd.resize((size_t) n_kept * row);
    for (int32_t j = 0; j < n_kept; j++) {
        std::copy(job.embd + (size_t) st.kept[j] * row, job.embd + (size_t) (st.kept[j] + 1) * row,
                  st.kept_embd.begin() + (size_t) j * row);
    }
    decode_embd_batch batch(st.kept_embd.data(), n_kept, job.n_pos_per_embd, (int) row);
    const bool renumber = st.params.renumber_positions && !mtmd_decode_use_mrope(job.ctx);
    topv_fill_positions(batch, job.chunk, job.ctx, job.n_past, job.seq_id, st.kept.data(), n_kept, renumber);
    // the kept tokens leave gaps, and the text after the image starts where the unpruned image would have ended: from
    // now on this context's sequences may skip positions (llama.cpp checks they are consecutive otherwise)
    if (!renumber) {
        llama_set_allow_pos_gaps(lctx, true);
    }
    const topv_scope_non_causal non_causal(lctx, mtmd_decode_use_non_causal(job.ctx, job.chunk));
    for (int32_t off = 0; off < n_kept; off += n_batch) {
        const int32_t n = std::min(n_batch, n_kept - off);
        int32_t ret = llama_process(lctx, LLAMA_PROCESS_TYPE_DECODE, batch.render(lctx, off, n));
        if (ret != 0) {
            LOG_ERR("topv: failed to decode the kept image tokens\n");
            return ret;
        }
        if (callback != nullptr) {
            const mtmd_helper_embd_batch view = batch.get_view(off, n);
            ret = callback(&view, user_data);
            if (ret != 0) {
                LOG_ERR("post-decode callback failed\n");
                return ret;
            }
        }
    }
    llama_synchronize(lctx); // the kept decode's own time, not the next call's (asynchronous backends)
    st.stats.decode_ms = topv_ms_since(t_decode);
    st.stats.n_kept    = n_kept;
    st.stats.result    = MTMD_TOPV_PRUNED;
    return 0;
}

bool mtmd_topv_try_decode_image_chunk(mtmd_context * ctx, llama_context * lctx, const mtmd_input_chunk * chunk,
                                      const float * embd, llama_pos n_past, llama_seq_id seq_id, int32_t n_batch,
                                      llama_pos * new_n_past, mtmd_helper_post_decode_callback callback,
                                      void * user_data, int32_t * ret) {
    mtmd_topv_state & st = *mtmd_topv_state_of(ctx);
    topv_chunk_job job{};
    job.ctx      = ctx;
    job.lctx     = lctx;
    job.chunk    = chunk;
    job.embd     = embd;
    job.n_past   = n_past;
    job.seq_id   = seq_id;
    job.n_tokens = (int32_t) mtmd_input_chunk_get_n_tokens(chunk);
    job.n_embd   = llama_model_n_embd(llama_get_model(lctx));
    job.n_pos_per_embd = mtmd_decode_use_mrope(ctx) ? 4 : 1;

    const mtmd_image_tokens * image_tokens = mtmd_input_chunk_get_tokens_image(chunk);
    mtmd_topv_image_facts facts{};
    const bool have_facts = image_tokens && mtmd_topv_image_facts_of(ctx, image_tokens, &facts);
    topv_begin_stats(st, have_facts ? &facts : nullptr, job.n_tokens, job.n_embd);
    if (!topv_plan(st, job, have_facts ? &facts : nullptr)) {
        return false;
    }

    std::vector<float> all_source, all_target; // every chunk token's features (the pass reads the grid's)
    switch (topv_probe_chunk(st, job, all_source, all_target)) {
        case topv_probe_result::ok:       break;
        case topv_probe_result::declined: return false;
        case topv_probe_result::failed:   *ret = -1; return true;
    }
    if (!topv_select_kept(st, job, all_source, all_target)) {
        return false;
    }
    *ret = topv_decode_kept(st, job, n_batch, callback, user_data);
    if (*ret != 0) {
        return true;
    }

    char line[256];
    LOG_INF("%s\n", mtmd_topv_format_stats(ctx, line, sizeof(line)));
    // as if nothing was pruned (the diagnostic renumbering: right after the kept tokens)
    const bool renumber = st.params.renumber_positions && !mtmd_decode_use_mrope(ctx);
    *new_n_past = n_past + (renumber ? (llama_pos) st.stats.n_kept : mtmd_input_chunk_get_n_pos(chunk));
    return true;
}
