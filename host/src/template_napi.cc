// template_napi.cc — N-API functions for templates: makeTemplate(snapshot),
// exportTemplate(template), importTemplate(image, config, cpuState, memory),
// releaseTemplate(template), templateByteLength(template). A Vm is
// cloned by passing a template handle to its constructor (addon.cc).
#include "template_napi.h"

#include <cmath>

#include "../../guest/include/abi.h"

namespace airlock {

namespace {

const napi_type_tag kTemplateTag = {0x6169726c6f636b54ull, 0x656d706c61746501ull};

Napi::Error codedError(Napi::Env env, const char *code, const std::string &message) {
    Napi::Error e = Napi::Error::New(env, message);
    e.Set("code", Napi::String::New(env, code));
    return e;
}

Napi::Value wrapTemplate(Napi::Env env, std::shared_ptr<const Template> t) {
    const int64_t bytes = static_cast<int64_t>(t->bytes());
    int64_t ignored = 0;
    // The image lives outside the JavaScript heap: the GC must know to collect handles.
    napi_adjust_external_memory(env, bytes, &ignored);
    auto *holder = new std::shared_ptr<const Template>(std::move(t));
    auto ext = Napi::External<std::shared_ptr<const Template>>::New(
        env, holder, [bytes](Napi::Env e, std::shared_ptr<const Template> *p) {
            delete p;
            int64_t left = 0;
            napi_adjust_external_memory(e, -bytes, &left);
        });
    napi_type_tag_object(env, ext, &kTemplateTag);
    return ext;
}

uint64_t integerField(Napi::Env env, const Napi::Object &o, const char *name, const std::string &where) {
    Napi::Value v = o.Get(name);
    if (!v.IsNumber()) throw codedError(env, "ERR_INVALID_ARG", where + "." + name + " must be a number");
    const double d = v.As<Napi::Number>().DoubleValue();
    if (!std::isfinite(d) || d < 0 || d != std::floor(d) || d > 9007199254740991.0)
        throw codedError(env, "ERR_INVALID_ARG", where + "." + name + " must be a non-negative integer");
    return static_cast<uint64_t>(d);
}

Napi::Value MakeTemplate(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    bool tagged = false;
    if (info.Length() >= 1 && info[0].IsExternal()) napi_check_object_type_tag(env, info[0], &kSnapshotTag, &tagged);
    if (!tagged) throw codedError(env, "ERR_INVALID_ARG", "makeTemplate() needs a snapshot made by snapshot()");
    const auto &snap = *info[0].As<Napi::External<std::shared_ptr<const Snapshot>>>().Data();
    try {
        return wrapTemplate(env, templateFromSnapshot(*snap));
    } catch (const ArgumentError &e) {
        throw codedError(env, "ERR_INVALID_ARG", e.what());
    }
}

Napi::Value ExportTemplate(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    std::shared_ptr<const Template> t = info.Length() >= 1 ? templateOf(env, info[0]) : nullptr;
    if (!t) throw codedError(env, "ERR_INVALID_ARG", "exportTemplate() needs a template made by this addon");
    Napi::Object out = Napi::Object::New(env);
    const std::vector<uint8_t> cpu = encodeCpuState(t->cpu);
    out.Set("cpuState", Napi::Buffer<uint8_t>::Copy(env, cpu.data(), cpu.size()));
    const std::vector<PageRun> runs = exportedRuns(*t);
    Napi::Array memory = Napi::Array::New(env, runs.size());
    for (uint32_t i = 0; i < runs.size(); ++i) {
        Napi::Object range = Napi::Object::New(env);
        range.Set("offset", Napi::Number::New(env, static_cast<double>(runs[i].from)));
        // Invariant: data runs lie inside the image (MemoryImage::capture), whose view
        // maps all of it.
        range.Set("bytes", Napi::Buffer<uint8_t>::Copy(env, t->memory->view() + runs[i].from, runs[i].to - runs[i].from));
        memory.Set(i, range);
    }
    out.Set("memory", memory);
    return out;
}

Napi::Value ImportTemplate(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    if (info.Length() < 4 || !info[0].IsBuffer() || !info[1].IsObject() || !info[2].IsTypedArray() || !info[3].IsArray())
        throw codedError(env, "ERR_INVALID_ARG",
                         "importTemplate(image: Buffer, config: object, cpuState: Uint8Array, memory: array)");
    auto image = info[0].As<Napi::Buffer<uint8_t>>();
    Napi::Object cfg = info[1].As<Napi::Object>();
    SandboxConfig config;
    config.heapSize = integerField(env, cfg, "heapSize", "config");
    config.stackSize = integerField(env, cfg, "stackSize", "config");
    config.inputSize = integerField(env, cfg, "inputSize", "config");
    config.outputSize = integerField(env, cfg, "outputSize", "config");
    config.consoleLimit = integerField(env, cfg, "consoleLimit", "config");
    Napi::TypedArray cpuArr = info[2].As<Napi::TypedArray>();
    if (cpuArr.TypedArrayType() != napi_uint8_array)
        throw codedError(env, "ERR_INVALID_ARG", "template cpuState must be a Uint8Array");
    auto cpu = cpuArr.As<Napi::Uint8Array>();
    Napi::Array memory = info[3].As<Napi::Array>();
    std::vector<SerializedRange> ranges;
    const uint32_t count = memory.Length();
    // Each range is at least a page in a real export; more entries than pages of the
    // largest guest cannot be honest, and bounds the work before the layout is known.
    if (count > (kMaxGuestMemory >> 12)) throw codedError(env, "ERR_INVALID_ARG", "template memory has too many ranges");
    ranges.reserve(count);
    for (uint32_t i = 0; i < count; ++i) {
        const std::string where = "template memory[" + std::to_string(i) + "]";
        Napi::Value item = memory.Get(i);
        if (!item.IsObject()) throw codedError(env, "ERR_INVALID_ARG", where + " must be an object");
        Napi::Object range = item.As<Napi::Object>();
        SerializedRange r;
        r.offset = integerField(env, range, "offset", where);
        Napi::Value bytes = range.Get("bytes");
        if (!bytes.IsTypedArray() || bytes.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
            throw codedError(env, "ERR_INVALID_ARG", where + ".bytes must be a Uint8Array");
        auto arr = bytes.As<Napi::Uint8Array>();
        r.bytes = arr.Data();
        r.len = arr.ByteLength();
        ranges.push_back(r);
    }
    try {
        return wrapTemplate(env, importTemplate(image.Data(), image.Length(), config, cpu.Data(), cpu.ByteLength(), ranges));
    } catch (const ArgumentError &e) {
        throw codedError(env, "ERR_INVALID_ARG", e.what());
    } catch (const std::exception &e) {
        throw codedError(env, "ERR_INTERNAL", std::string("cannot make the template's memory: ") + e.what());
    }
}

Napi::Value TemplateByteLength(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    std::shared_ptr<const Template> t = info.Length() >= 1 ? templateOf(env, info[0]) : nullptr;
    if (!t) throw codedError(env, "ERR_INVALID_ARG", "templateByteLength() needs a template made by this addon");
    return Napi::Number::New(env, static_cast<double>(t->memory->dataBytes()));
}

// Drops this handle's reference now instead of at garbage collection: the image goes
// when the last clone made from it does. Later uses of the handle are refused.
Napi::Value ReleaseTemplate(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    bool tagged = false;
    if (info.Length() >= 1 && info[0].IsExternal()) napi_check_object_type_tag(env, info[0], &kTemplateTag, &tagged);
    if (!tagged) throw codedError(env, "ERR_INVALID_ARG", "releaseTemplate() needs a template made by this addon");
    info[0].As<Napi::External<std::shared_ptr<const Template>>>().Data()->reset();
    return env.Undefined();
}

} // namespace

std::shared_ptr<const Template> templateOf(Napi::Env env, Napi::Value v) {
    bool tagged = false;
    if (v.IsExternal()) napi_check_object_type_tag(env, v, &kTemplateTag, &tagged);
    if (!tagged) return nullptr;
    return *v.As<Napi::External<std::shared_ptr<const Template>>>().Data();
}

void registerTemplateApi(Napi::Env env, Napi::Object exports) {
    exports.Set("makeTemplate", Napi::Function::New(env, MakeTemplate, "makeTemplate"));
    exports.Set("exportTemplate", Napi::Function::New(env, ExportTemplate, "exportTemplate"));
    exports.Set("importTemplate", Napi::Function::New(env, ImportTemplate, "importTemplate"));
    exports.Set("releaseTemplate", Napi::Function::New(env, ReleaseTemplate, "releaseTemplate"));
    exports.Set("templateByteLength", Napi::Function::New(env, TemplateByteLength, "templateByteLength"));
}

} // namespace airlock
