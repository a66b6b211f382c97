// mtmd-topv-layouts.cpp - the one table of image layouts: per vision projector type, how an image chunk's tokens
// map to the grid the pass sees, which tokens are structural, which text models the projector belongs with, and,
// for every type the stage cannot handle, the reason. The stage prunes only what an entry describes, and only when
// the chunk matches the entry (token count, grid, position type): anything else is declined with a sentence.
//
// Facts are for the llama.cpp commit the patches target (0c1e57098bba); docs/families.md lists them with sources.

#include "mtmd-topv-impl.h"

#include "clip.h"
#include "clip-impl.h"
#include "clip-model.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>

namespace {

// how the tokens of one chunk form a grid
enum class grid_rule {
    declined,   // the stage does not prune this projector type (entry.reason says why)
    square,     // a square grid in row-major order, side = sqrt(n_tokens) (LLaVA-1.5 family, Gemma 3's pooled grid)
    mrope_nxny, // M-RoPE models: mtmd's nx x ny merged grid, row-major (Qwen2/2.5/3-VL, Qwen3.5)
    entry_grid, // ordinary positions, the grid from the preprocessed image's size / (patch size x merge), row-major (Gemma 4)
    row_breaks, // the entry grid, row-major, with an [IMG_BREAK] embedding after every row but the last (Pixtral)
    aligned_entry_grid, // the entry grid rounded up to whole tokens (the encoder pads), row-major (LFM2-VL)
    queries,    // learned resampler queries, no spatial cells: a 1-row "grid" the pass reads without its spatial terms
                // (MiniCPM-V)
};

struct layout_entry {
    projector_type proj;
    const char *   families;    // the models people run with it
    grid_rule      grid;
    const char *   text_archs;  // comma-separated text architectures it belongs with; nullptr: any not owned by another entry
    bool           mrope;       // the text model must use M-RoPE positions
    const char *   reason;      // why the stage declines the type (grid_rule::declined)
};

constexpr const char * AUDIO  = "an audio encoder: TopV prunes image tokens only";
constexpr const char * SPEECH = "a speech generator, not an image encoder";
constexpr const char * QWEN3VL_ARCHS = "qwen3vl,qwen3vlmoe,qwen35,qwen35moe"; // Qwen3-VL and Qwen3.5 share the encoder

const layout_entry LAYOUTS[] = {
    { PROJECTOR_TYPE_MLP,        "LLaVA-1.5, LLaVA-1.6 (tiled), BakLLaVA, ShareGPT4V, Granite Vision 3.x (tiled)", grid_rule::square,     nullptr,   false, nullptr },
    { PROJECTOR_TYPE_MLP_NORM,   "Yi-VL (an mlp mmproj with a projector norm)",                                     grid_rule::square,     nullptr,   false, nullptr },
    { PROJECTOR_TYPE_LDP,        "MobileVLM",                                   grid_rule::square,     nullptr,   false, nullptr },
    { PROJECTOR_TYPE_LDPV2,      "MobileVLM V2",                                grid_rule::square,     nullptr,   false, nullptr },
    { PROJECTOR_TYPE_GEMMA3,     "Gemma 3",                                     grid_rule::square,     "gemma3",  false, nullptr },
    { PROJECTOR_TYPE_GEMMA4V,    "Gemma 4",                                     grid_rule::entry_grid, "gemma4",  false, nullptr },
    { PROJECTOR_TYPE_GEMMA4UV,   "Gemma 4 (unified)",                           grid_rule::entry_grid, "gemma4",  false, nullptr },
    { PROJECTOR_TYPE_QWEN2VL,    "Qwen2-VL",                                    grid_rule::mrope_nxny, "qwen2vl", true,  nullptr },
    { PROJECTOR_TYPE_QWEN25VL,   "Qwen2.5-VL, Qwen2.5-Omni",                    grid_rule::mrope_nxny, "qwen2vl", true,  nullptr },
    { PROJECTOR_TYPE_QWEN3VL,    "Qwen3-VL, Qwen3-Omni, Qwen3.5",               grid_rule::mrope_nxny, QWEN3VL_ARCHS, true, nullptr },
    { PROJECTOR_TYPE_PIXTRAL,    "Pixtral, Mistral Small 3.x",                  grid_rule::row_breaks, nullptr,   false, nullptr },
    { PROJECTOR_TYPE_LIGHTONOCR, "LightOnOCR",                                  grid_rule::row_breaks, nullptr,   false, nullptr },

    // tiled families: every tile and the overview is its own chunk (one entry each), pruned on its own grid with its
    // share of the picture's budget (mtmd_topv_chunk_budget)
    { PROJECTOR_TYPE_IDEFICS3,   "SmolVLM, SmolVLM2, Idefics3", grid_rule::square, nullptr, false, nullptr },
    { PROJECTOR_TYPE_INTERNVL,   "InternVL 2.5/3",        grid_rule::square,     nullptr, false, nullptr },
    { PROJECTOR_TYPE_LFM2,       "LFM2-VL",               grid_rule::aligned_entry_grid, "lfm2,lfm2moe", false, nullptr },
    { PROJECTOR_TYPE_MINICPMV,   "MiniCPM-V 2.5/2.6/4, MiniCPM-o", grid_rule::queries, nullptr, false, nullptr },
    { PROJECTOR_TYPE_MINICPMV4_6,"MiniCPM-V 4.6",         grid_rule::declined, nullptr, false, "its slices are merged patch grids (not resampler queries as in MiniCPM-V 2.x) whose order no test model checks yet" },
    { PROJECTOR_TYPE_LLAMA4,     "Llama 4",               grid_rule::declined, "llama4", false, "its tiles are pixel-shuffled in a transposed (column-major) order by our reading of models/llama4.cpp, which no test model checks yet" },
    { PROJECTOR_TYPE_GLM_EDGE,   "GLM-Edge-V",            grid_rule::declined, nullptr, false, "begin/end embeddings inside the image are not handled yet" },
    { PROJECTOR_TYPE_COGVLM,     "CogVLM",                grid_rule::declined, nullptr, false, "begin/end embeddings inside the image are not handled yet" },
    { PROJECTOR_TYPE_HUNYUANVL,  "HunyuanVL",             grid_rule::declined, nullptr, false, "begin, row newline and end embeddings inside the image, with their own XD-RoPE positions, are not handled yet" },
    { PROJECTOR_TYPE_DEEPSEEKOCR,"DeepSeek-OCR",          grid_rule::declined, nullptr, false, "newline and view-separator embeddings inside the image are not handled yet" },
    { PROJECTOR_TYPE_DEEPSEEKOCR2,"DeepSeek-OCR 2",       grid_rule::declined, nullptr, false, "newline and view-separator embeddings inside the image are not handled yet" },
    { PROJECTOR_TYPE_DEEPSEEK4V, "DeepSeek 4 V",          grid_rule::declined, nullptr, false, "image tokens are padded and grouped into compression blocks, not a plain grid" },
    { PROJECTOR_TYPE_GRANITE4_VISION, "Granite 4 Vision", grid_rule::declined, nullptr, false, "overview and tiles in one chunk with newline embeddings and deepstack rows are not handled yet" },
    { PROJECTOR_TYPE_STEP3VL,    "Step3-VL",              grid_rule::declined, nullptr, false, "its patch chunks and overview (with start/end/newline text) have no test model to check their grids yet" },
    { PROJECTOR_TYPE_KIMIVL,     "Kimi-VL",               grid_rule::declined, nullptr, false, "its dynamic grid (aligned to the merge size, pixel-unshuffled) is not described by the table yet" },
    { PROJECTOR_TYPE_KIMIK25,    "Kimi K2.5, GLM-5.2-V",  grid_rule::declined, nullptr, false, "its dynamic grid (aligned to the merge size, pixel-unshuffled) is not described by the table yet" },
    { PROJECTOR_TYPE_PHI4,       "Phi-4 multimodal",      grid_rule::declined, nullptr, false, "its dynamic grid is not described by the table yet" },
    { PROJECTOR_TYPE_GLM4V,      "GLM-4V",                grid_rule::declined, nullptr, false, "its M-RoPE grid with begin/end tokens is not described by the table yet" },
    { PROJECTOR_TYPE_GLM5V,      "GLM-5V",                grid_rule::declined, nullptr, false, "its M-RoPE grid with begin/end tokens is not described by the table yet" },
    { PROJECTOR_TYPE_PADDLEOCR,  "PaddleOCR-VL",          grid_rule::declined, nullptr, false, "its dynamic grid is not described by the table yet" },
    { PROJECTOR_TYPE_DOTS_OCR,   "dots.ocr",              grid_rule::declined, nullptr, false, "its dynamic grid is not described by the table yet" },
    { PROJECTOR_TYPE_GEMMA3NV,   "Gemma 3n",              grid_rule::declined, nullptr, false, "the MobileNet-style encoder of Gemma 3n feeds a text model with per-layer inputs (not handled yet)" },
    { PROJECTOR_TYPE_JANUS_PRO,  "Janus-Pro",             grid_rule::declined, nullptr, false, "not described by the table yet (no test model)" },
    { PROJECTOR_TYPE_LING3VL,    "Ling 3 VL",             grid_rule::declined, nullptr, false, "not described by the table yet (no test model)" },
    { PROJECTOR_TYPE_YOUTUVL,    "Youtu-VL",              grid_rule::declined, nullptr, false, "not described by the table yet (no test model)" },
    { PROJECTOR_TYPE_NEMOTRON_V2_VL, "Nemotron Nano VL",  grid_rule::declined, nullptr, false, "its tiles have no test model to check their grid yet" },
    { PROJECTOR_TYPE_EXAONE4_5,  "EXAONE 4.5",            grid_rule::declined, nullptr, false, "not described by the table yet (no test model)" },
    { PROJECTOR_TYPE_MIMOVL,     "MiMo-VL",               grid_rule::declined, nullptr, false, "not described by the table yet (no test model)" },
    { PROJECTOR_TYPE_DOTS3NOTE_V,"dots3note",             grid_rule::declined, nullptr, false, "not described by the table yet (no test model)" },
    { PROJECTOR_TYPE_YASA2,      "Yasa 2",                grid_rule::declined, nullptr, false, "not described by the table yet (no test model)" },
    { PROJECTOR_TYPE_MINIMAX_M3, "MiniMax M3",            grid_rule::declined, nullptr, false, "not described by the table yet (no test model)" },
    { PROJECTOR_TYPE_MUSE_GLIMMER, "Muse Glimmer",        grid_rule::declined, nullptr, false, "not described by the table yet (no test model)" },

    { PROJECTOR_TYPE_ULTRAVOX,   "Ultravox",              grid_rule::declined, nullptr, false, AUDIO },
    { PROJECTOR_TYPE_QWEN2A,     "Qwen2-Audio, Qwen2.5-Omni audio", grid_rule::declined, nullptr, false, AUDIO },
    { PROJECTOR_TYPE_QWEN3A,     "Qwen3-Omni audio",      grid_rule::declined, nullptr, false, AUDIO },
    { PROJECTOR_TYPE_GLMA,       "GLM audio",             grid_rule::declined, nullptr, false, AUDIO },
    { PROJECTOR_TYPE_VOXTRAL,    "Voxtral",               grid_rule::declined, nullptr, false, AUDIO },
    { PROJECTOR_TYPE_MERALION,   "MERaLiON",              grid_rule::declined, nullptr, false, AUDIO },
    { PROJECTOR_TYPE_MUSIC_FLAMINGO, "Music Flamingo",    grid_rule::declined, nullptr, false, AUDIO },
    { PROJECTOR_TYPE_LFM2A,      "LFM2-Audio",            grid_rule::declined, nullptr, false, AUDIO },
    { PROJECTOR_TYPE_GEMMA3NA,   "Gemma 3n audio",        grid_rule::declined, nullptr, false, AUDIO },
    { PROJECTOR_TYPE_GEMMA4A,    "Gemma 4 audio",         grid_rule::declined, nullptr, false, AUDIO },
    { PROJECTOR_TYPE_GEMMA4UA,   "Gemma 4 audio (unified)", grid_rule::declined, nullptr, false, AUDIO },
    { PROJECTOR_TYPE_DOTS3NOTE_A,"dots3note audio",       grid_rule::declined, nullptr, false, AUDIO },
    { PROJECTOR_TYPE_PARAKEET,   "Parakeet",              grid_rule::declined, nullptr, false, AUDIO },
    { PROJECTOR_TYPE_GRANITE_SPEECH, "Granite Speech",    grid_rule::declined, nullptr, false, AUDIO },
    { PROJECTOR_TYPE_MIMO_AUDIO, "MiMo audio",            grid_rule::declined, nullptr, false, AUDIO },
    { PROJECTOR_TYPE_QWEN3TTS_GEN,    "Qwen3-TTS",         grid_rule::declined, nullptr, false, SPEECH },
    { PROJECTOR_TYPE_QWEN3TTS_SPKENC, "Qwen3-TTS speaker encoder", grid_rule::declined, nullptr, false, SPEECH },
    { PROJECTOR_TYPE_POCKETTTS_GEN,   "Pocket TTS",        grid_rule::declined, nullptr, false, SPEECH },
    { PROJECTOR_TYPE_POCKETTTS_SPKENC,"Pocket TTS speaker encoder", grid_rule::declined, nullptr, false, SPEECH },
};

const layout_entry * find_entry(int32_t proj) {
    for (const layout_entry & e : LAYOUTS) {
        if ((int32_t) e.proj == proj) {
            return &e;
        }
    }
    return nullptr;
}

// the name the mmproj gives the type; MLP_NORM has none (clip.cpp makes it from an "mlp" with a projector norm)
const char * projector_cname(int32_t proj) {
    const auto it = PROJECTOR_TYPE_NAMES.find((projector_type) proj);
    if (it != PROJECTOR_TYPE_NAMES.end()) {
        return it->second.c_str();
    }
    return proj == PROJECTOR_TYPE_MLP_NORM ? "mlp_norm" : nullptr;
}

std::string projector_name(int32_t proj) {
    const char * name = projector_cname(proj);
    return name ? name : "type " + std::to_string(proj);
}

bool in_list(const char * list, const std::string & name) {
    if (!list) {
        return false;
    }
    std::string s(list);
    size_t start = 0;
    while (start <= s.size()) {
        const size_t end = s.find(',', start);
        if (s.substr(start, end == std::string::npos ? std::string::npos : end - start) == name) {
            return true;
        }
        if (end == std::string::npos) {
            break;
        }
        start = end + 1;
    }
    return false;
}

bool decline(std::string * reason, std::string text) {
    if (reason) {
        *reason = std::move(text);
    }
    return false;
}

// the grid tokens of a w x h row-major grid whose rows are `stride` tokens apart in the chunk; with stride = w + 1
// the token after each row but the last is a structural one (Pixtral's [IMG_BREAK])
void strided_grid(mtmd_topv_chunk_layout * out, int32_t w, int32_t h, int32_t stride) {
    out->grid_w = w;
    out->grid_h = h;
    out->grid_tokens.clear();
    out->pos_x.clear();
    out->pos_y.clear();
    out->always_kept.clear();
    for (int32_t y = 0; y < h; y++) {
        for (int32_t x = 0; x < w; x++) {
            out->grid_tokens.push_back(y * stride + x);
            out->pos_x.push_back(x);
            out->pos_y.push_back(y);
        }
        for (int32_t x = w; x < stride && y + 1 < h; x++) {
            out->always_kept.push_back(y * stride + x);
        }
    }
}

// the text architectures whose post-attention norm (the pass's target) is not called "ffn_norm"
const char * target_node_of(const std::string & arch) {
    if (arch == "qwen35" || arch == "qwen35moe") {
        return "attn_post_norm"; // src/models/qwen35*.cpp: the norm before the FFN, after the attention / delta net
    }
    if (arch == "lfm2" || arch == "lfm2moe") {
        // src/models/lfm2.cpp names the FFN norm's output "model.layers.{}.ffn_norm" and then, by a second cb() on
        // the same tensor, "model.layers.{}.ffn_out": the last name is the one the scheduler sees
        return "model.layers.{}.ffn_out";
    }
    return "ffn_norm";
}

} // namespace

int32_t mtmd_topv_merged_frames(const mtmd_topv_image_facts & f) {
    return f.n_temporal_merge > 1 && f.n_entries == f.n_temporal_merge ? (int32_t) f.n_entries : 1;
}

bool mtmd_topv_resolve_layout(const mtmd_topv_image_facts & f, const llama_model * model,
                              mtmd_topv_chunk_layout * out, std::string * reason) {
    if (!model || !out || !f.ctx_v) {
        return decline(reason, "the chunk has no vision tower or image tokens");
    }
    const layout_entry * e = find_entry(f.proj_type);
    const std::string name = projector_name(f.proj_type);
    if (!e) {
        return decline(reason, "projector '" + name + "' is not in the layout table of this build");
    }
    if (e->grid == grid_rule::declined) {
        return decline(reason, "projector '" + name + "' (" + e->families + "): " + e->reason);
    }
    // one picture: no slices, tiles or video frames in one chunk (Qwen-VL's temporal merge of one picture is still
    // one grid), except the frames an M-RoPE encoder merges in time: a Qwen-VL video chunk holds n_temporal_merge
    // consecutive frames, which its 3-D patch embedding turns into one nx x ny grid at one t (mtmd.cpp counts
    // nx * ny tokens for them)
    const bool merged_frames = mtmd_topv_merged_frames(f) > 1 && e->grid == grid_rule::mrope_nxny;
    if (f.n_entries != 1 && !merged_frames) {
        return decline(reason, "projector '" + name + "': a picture of " + std::to_string(f.n_entries) +
                               " slices or frames in one chunk is not a single grid");
    }
    const clip_model * vm = clip_get_model(f.ctx_v);
    if (!vm) {
        return decline(reason, "projector '" + name + "': the vision tower is not readable");
    }

    // rows: the text model's input width; deepstack (Qwen3-VL) appends one n_embd slice per deepstack layer
    out->n_embd      = llama_model_n_embd(model);
    out->row_width   = llama_model_n_embd_inp(model);
    out->n_deepstack = out->n_embd > 0 ? (int32_t) (out->row_width / out->n_embd) - 1 : -1;
    if (clip_n_mmproj_embd(f.ctx_v) != out->row_width) {
        return decline(reason, "projector '" + name + "': image rows are " + std::to_string(clip_n_mmproj_embd(f.ctx_v)) +
                               " wide, the text model's input " + std::to_string(out->row_width));
    }
    const int32_t ds_vision = f.proj_type == PROJECTOR_TYPE_QWEN3VL ? vm->n_deepstack_layers : 0;
    if (out->n_deepstack < 0 || (int64_t) (1 + out->n_deepstack) * out->n_embd != out->row_width ||
        out->n_deepstack != ds_vision) {
        return decline(reason, "projector '" + name + "': image rows of " + std::to_string(out->row_width) +
                               " floats are not the text model's " + std::to_string(out->n_embd) + " plus " +
                               std::to_string(ds_vision) + " deepstack slices of the vision tower");
    }

    // the probe's graph nodes, and whether the memory has a part that cannot be rolled back (hybrid / recurrent)
    char arch_buf[128] = {0};
    llama_model_meta_val_str(model, "general.architecture", arch_buf, sizeof(arch_buf));
    out->target_node = target_node_of(arch_buf);
    out->recurrent   = llama_model_is_recurrent(model) || llama_model_is_hybrid(model);

    out->place   = f.place;
    out->spatial = e->grid != grid_rule::queries;

    const uint32_t n = f.n_tokens;
    if (f.pos_type != (e->mrope ? 1 : 0)) { // mtmd's position types: 0 ordinary, 1 M-RoPE, 2 HunyuanVL
        return decline(reason, "projector '" + name + "': expected " + (e->mrope ? "M-RoPE" : "ordinary") + " positions");
    }
    // the grid of the preprocessed picture: its pixel size over the patch size and the merge (pooling) factor
    const int32_t cell = vm->hparams.patch_size * std::max(1, vm->hparams.n_merge);
    const int32_t ew   = cell > 0 ? f.entry_nx / cell : 0;
    const int32_t eh   = cell > 0 ? f.entry_ny / cell : 0;
    switch (e->grid) {
        case grid_rule::mrope_nxny:
            if (f.nx * f.ny != n) {
                return decline(reason, "projector '" + name + "': expected an M-RoPE grid of nx x ny tokens, got " +
                                       std::to_string(f.nx) + " x " + std::to_string(f.ny) + " for " + std::to_string(n) + " tokens");
            }
            strided_grid(out, (int32_t) f.nx, (int32_t) f.ny, (int32_t) f.nx);
            return true;
        case grid_rule::square: {
            // With a class embedding the LLaVA graph at this commit moves the projected class token to the end
            // and drops the first patch: not a grid. patches/10 puts it first (the output rows are then the
            // patches in grid order) and defines CLIP_TOPV_CLASS_TOKEN_FIRST; without it the entry declines.
#ifndef CLIP_TOPV_CLASS_TOKEN_FIRST
            // (InternVL's graph appends its class token after the patches and cuts it off again: not affected)
            if (vm->class_embedding != nullptr && f.proj_type != PROJECTOR_TYPE_INTERNVL) {
                return decline(reason, "projector '" + name + "': a vision tower with a class embedding (this llama.cpp "
                                       "puts the class token after the patches, so the tokens are not a grid)");
            }
#endif
            uint32_t side = 0;
            while ((side + 1) * (side + 1) <= n) {
                side++;
            }
            if (side * side != n) {
                return decline(reason, "projector '" + name + "': " + std::to_string(n) + " tokens are not a square grid");
            }
            strided_grid(out, (int32_t) side, (int32_t) side, (int32_t) side);
            return true;
        }
        case grid_rule::entry_grid:
            // Gemma 4: avg-pooled n_merge x n_merge patches of a dynamic-size picture, x fastest (models/gemma4v.cpp)
            if (ew < 1 || eh < 1 || (uint32_t) (ew * eh) != n || f.entry_nx % cell != 0 || f.entry_ny % cell != 0) {
                return decline(reason, "projector '" + name + "': " + std::to_string(n) + " tokens are not the " +
                                       std::to_string(ew) + " x " + std::to_string(eh) + " grid of a " +
                                       std::to_string(f.entry_nx) + " x " + std::to_string(f.entry_ny) + " picture");
            }
            strided_grid(out, ew, eh, ew);
            return true;
        case grid_rule::row_breaks: {
            // Pixtral: merged patches row by row, an [IMG_BREAK] embedding after every row but the last
            // (models/pixtral.cpp); without the break tensor the rows are contiguous
            const bool breaks = vm->token_embd_img_break != nullptr;
            const uint32_t expect = (uint32_t) (ew * eh + (breaks ? eh - 1 : 0));
            if (ew < 1 || eh < 1 || expect != n) {
                return decline(reason, "projector '" + name + "': " + std::to_string(n) + " tokens are not the " +
                                       std::to_string(ew) + " x " + std::to_string(eh) + " grid" +
                                       (breaks ? " with row breaks" : "") + " of a " + std::to_string(f.entry_nx) +
                                       " x " + std::to_string(f.entry_ny) + " picture");
            }
            strided_grid(out, ew, eh, breaks ? ew + 1 : ew);
            return true;
        }
        case grid_rule::aligned_entry_grid: {
            // LFM2-VL: pixel-unshuffled patches of the tile or of the dynamic-size picture, rounded up to whole tokens
            // (clip.cpp clip_n_output_tokens, CLIP_ALIGN), x fastest (models/lfm2.cpp)
            const int32_t aw = cell > 0 ? (f.entry_nx + cell - 1) / cell : 0;
            const int32_t ah = cell > 0 ? (f.entry_ny + cell - 1) / cell : 0;
            if (aw < 1 || ah < 1 || (uint32_t) (aw * ah) != n) {
                return decline(reason, "projector '" + name + "': " + std::to_string(n) + " tokens are not the " +
                                       std::to_string(aw) + " x " + std::to_string(ah) + " grid of a " +
                                       std::to_string(f.entry_nx) + " x " + std::to_string(f.entry_ny) + " picture");
            }
            strided_grid(out, aw, ah, aw);
            return true;
        }
        case grid_rule::queries:
            // MiniCPM-V: the resampler's learned queries, each attending to the whole slice: no cells, so no spatial
            // costs; a 1-row grid in query order
            if (n < 1) {
                return decline(reason, "projector '" + name + "': an empty chunk");
            }
            strided_grid(out, (int32_t) n, 1, (int32_t) n);
            return true;
        case grid_rule::declined:
            break;
    }
    return decline(reason, "projector '" + name + "': no grid rule");
}

void mtmd_topv_probe_nodes(const mtmd_topv_chunk_layout & layout, int32_t layer, std::string * source, std::string * target) {
    // layer Li's input is layer Li-1's output; with deepstack, after slice Li of the row was added to it
    // (src/models/qwen3vl.cpp: "deepstack_out-<il>" = "l_out-<il>" + slice il+1, for il < n_deepstack)
    if (layer == 0) {
        source->clear(); // the embeddings themselves (the first n_embd floats of each row)
    } else {
        *source = std::string(layer - 1 < layout.n_deepstack ? "deepstack_out-" : "l_out-") + std::to_string(layer - 1);
    }
    *target = layout.target_node + "-" + std::to_string(layer);
}

void mtmd_topv_set_missing_markers(mtmd_topv_state * st, int32_t proj, const std::vector<std::string> & missing) {
    std::string names;
    for (const std::string & m : missing) {
        std::string shown; // "\n" and "\n\n" (SmolVLM's) are markers too: print them escaped, on one line
        for (const char c : m) {
            shown += c == '\n' ? std::string("\\n") : std::string(1, c);
        }
        names += (names.empty() ? "'" : ", '") + shown + "'";
    }
    const layout_entry * e = find_entry(proj);
    st->image_input_error = "the mmproj (projector '" + projector_name(proj) + "'" + (e ? std::string(", ") + e->families : "") +
                            ") marks images with tokens the text model does not have (" +
                            (names.empty() ? std::string("unnamed") : names) + "): it belongs with another model";
}

const char * mtmd_topv_image_input_error(const mtmd_context * ctx) {
    if (!ctx) {
        return nullptr;
    }
    const std::string & why = mtmd_topv_state_of(ctx)->image_input_error;
    return why.empty() ? nullptr : why.c_str();
}

int32_t mtmd_topv_check_model(const mtmd_context * ctx, const llama_model * model, char * reason, size_t size) {
    auto say = [&](const std::string & text) {
        if (reason && size > 0) {
            snprintf(reason, size, "%s", text.c_str());
        }
        return 1;
    };
    if (reason && size > 0) {
        reason[0] = '\0';
    }
    if (!ctx || !model) {
        return say("no mmproj or no model");
    }
    if (const char * why = mtmd_topv_image_input_error(ctx)) {
        return say(why);
    }
    const clip_ctx * ctx_v = mtmd_topv_vision_of(ctx);
    if (!ctx_v) {
        return 0; // no vision tower (audio only): nothing for TopV to check
    }
    const int32_t proj = (int32_t) clip_get_projector_type(ctx_v);
    char arch_buf[128] = {0};
    if (llama_model_meta_val_str(model, "general.architecture", arch_buf, sizeof(arch_buf)) < 0) {
        return say("the text model has no general.architecture");
    }
    const std::string arch(arch_buf);
    const std::string name = projector_name(proj);
    const layout_entry * e = find_entry(proj);
    if (!e) {
        return 0; // unknown to the table: llama.cpp's own checks apply, the stage declines it at decode time
    }
    if (e->text_archs) {
        if (!in_list(e->text_archs, arch)) {
            return say("the mmproj (projector '" + name + "', " + e->families + ") belongs with a '" + e->text_archs +
                       "' text model, but the model is '" + arch + "'");
        }
    } else {
        for (const layout_entry & other : LAYOUTS) {
            if (&other != e && in_list(other.text_archs, arch)) {
                return say("the model is a '" + arch + "' text model (" + other.families + "), which takes a '" +
                           projector_name((int32_t) other.proj) + "' mmproj, not '" + name + "' (" + e->families + ")");
            }
        }
    }
    const bool model_mrope = llama_model_rope_type(model) == LLAMA_ROPE_TYPE_MROPE ||
                             llama_model_rope_type(model) == LLAMA_ROPE_TYPE_IMROPE;
    if (e->mrope && !model_mrope) {
        return say("the mmproj (projector '" + name + "') needs a text model with M-RoPE positions, but '" + arch + "' has none");
    }
    return 0;
}

//
// the table, for docs and tests (README "Supported families" is checked against it)
//

namespace {
const char * grid_phrase(const layout_entry & e) {
    switch (e.grid) {
        case grid_rule::square:
            switch (e.proj) {
                case PROJECTOR_TYPE_GEMMA3:   return "square pooled grid, non-causal image attention";
                case PROJECTOR_TYPE_IDEFICS3: return "tiles and an overview, each a pixel-shuffled square grid, one budget per picture";
                case PROJECTOR_TYPE_INTERNVL: return "tiles and a thumbnail, each a pixel-shuffled square grid, one budget per picture";
                case PROJECTOR_TYPE_MLP:      return "square grid of patches (class token dropped by the encoder); anyres tiles and overview share one budget";
                default:                      return "square grid of patches (class token dropped by the encoder)";
            }
        case grid_rule::mrope_nxny: return e.proj == PROJECTOR_TYPE_QWEN3VL ? "M-RoPE nx x ny merged grid; deepstack rows; hybrid memory (Qwen3.5)"
                                                                           : "M-RoPE nx x ny merged grid";
        case grid_rule::entry_grid: return "dynamic grid from the picture's size, non-causal image attention (but E2B/E4B)";
        case grid_rule::row_breaks: return "dynamic grid from the picture's size, [IMG_BREAK] after each row kept";
        case grid_rule::aligned_entry_grid: return "tiles and a thumbnail (or one dynamic grid), one budget per picture; hybrid memory";
        case grid_rule::queries:    return "overview and slices of resampler queries (no spatial terms), one budget per picture";
        case grid_rule::declined:   return "";
    }
    return "";
}
} // namespace

int32_t mtmd_topv_layout_count(void) {
    return (int32_t) (sizeof(LAYOUTS) / sizeof(LAYOUTS[0]));
}

bool mtmd_topv_layout_get(int32_t i, struct mtmd_topv_layout_info * out) {
    if (!out || i < 0 || i >= mtmd_topv_layout_count()) {
        return false;
    }
    const layout_entry & e = LAYOUTS[i];
    out->projector  = projector_cname((int32_t) e.proj) ? projector_cname((int32_t) e.proj) : "";
    out->families   = e.families;
    out->text_archs = e.text_archs;
    out->prunes     = e.grid != grid_rule::declined;
#ifndef CLIP_TOPV_CLASS_TOKEN_FIRST
    out->class_token_declined = true;
#else
    out->class_token_declined = false;
#endif
    out->layout     = grid_phrase(e);
    out->reason     = e.reason;
    return true;
}
