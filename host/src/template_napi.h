// template_napi.h — the addon's template surface: handles for snapshots and templates
// (type-tagged externals) and the functions that make, export and import templates.
#pragma once

#include <napi.h>

#include <memory>

#include "template.h"

namespace airlock {

// Marks snapshot handles made by this addon, so a cast of one can be trusted.
inline constexpr napi_type_tag kSnapshotTag = {0x6169726c6f636b53ull, 0x6e617073686f7401ull};

// The template behind `v`, or null when `v` is not a template handle of this addon.
std::shared_ptr<const Template> templateOf(Napi::Env env, Napi::Value v);

// Adds makeTemplate, exportTemplate and importTemplate to the addon's exports.
void registerTemplateApi(Napi::Env env, Napi::Object exports);

} // namespace airlock
