// Validates Istio resources (WasmPlugin extensions.istio.io/v1alpha1, EnvoyFilter
// networking.istio.io/v1alpha3) against Istio's published CRD schemas, as packaged by
// @kubernetes-models/istio (see README.md for the version and where the schemas come from).
//
//   node validate.mjs INPUT.json
//
// INPUT is a JSON array of {"name": "<label>", "doc": <resource>} (the Rust test converts the
// YAML). Prints a JSON array of {"name", "kind", "errors": [{"check", "path", "message"}]} and
// exits 0 if every resource is valid, 1 if any is not, 2 if the input cannot be processed.
//
// Checks, per resource:
//  - "schema": the CRD's OpenAPI v3 schema (types, enums, patterns, lengths, ranges, required
//    fields), via the package's compiled validator (Model.validate()).
//  - "fields": unknown fields, which `kubectl apply` rejects (server-side strict field
//    validation) but the validator above accepts (CRD schemas have no additionalProperties:
//    false). Each field is looked up in the package's TypeScript declarations, generated from
//    the same schema, through the TypeScript compiler's type checker. Free-form fields
//    (x-kubernetes-preserve-unknown-fields: pluginConfig, patch.value) are declared `{}` and
//    are not descended into.
//  - "cel": the CRDs' x-kubernetes-validations (CEL) rules that apply to these resources,
//    which the compiled validator drops; re-implemented here by hand.
//  - "webhook": a few of istiod's validating-webhook rules for EnvoyFilter patches.
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import ts from "typescript";
import { WasmPlugin } from "@kubernetes-models/istio/extensions.istio.io/v1alpha1/WasmPlugin";
import { EnvoyFilter } from "@kubernetes-models/istio/networking.istio.io/v1alpha3/EnvoyFilter";

const here = dirname(fileURLToPath(import.meta.url));

const KINDS = {
  "extensions.istio.io/v1alpha1/WasmPlugin": {
    model: WasmPlugin,
    tsImport: "@kubernetes-models/istio/extensions.istio.io/v1alpha1/WasmPlugin",
    tsType: "IWasmPlugin",
  },
  "networking.istio.io/v1alpha3/EnvoyFilter": {
    model: EnvoyFilter,
    tsImport: "@kubernetes-models/istio/networking.istio.io/v1alpha3/EnvoyFilter",
    tsType: "IEnvoyFilter",
  },
};

function kindKey(doc) {
  return `${doc?.apiVersion}/${doc?.kind}`;
}

// ---- schema: the compiled OpenAPI validator ----

function schemaErrors(spec, doc) {
  try {
    new spec.model(doc).validate();
    return [];
  } catch (e) {
    if (!Array.isArray(e?.errors)) throw e;
    return e.errors.map((err) => ({
      check: "schema",
      path: err.instancePath || "/",
      message: `${err.message}${err.params && Object.keys(err.params).length ? " " + JSON.stringify(err.params) : ""}`,
    }));
  }
}

// ---- fields: unknown fields, from the package's TypeScript declarations ----

// Resolves the declared TypeScript type of each supported kind once.
function declaredTypes() {
  const file = join(here, "__kinds__.ts");
  const entries = Object.entries(KINDS);
  const text =
    entries.map(([, k]) => `import type { ${k.tsType} } from "${k.tsImport}";`).join("\n") +
    "\n" +
    entries.map(([, k], i) => `declare const kind${i}: ${k.tsType};`).join("\n") +
    "\n";
  const options = {
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.ESNext,
    moduleResolution: ts.ModuleResolutionKind.Bundler,
    types: [],
  };
  const host = ts.createCompilerHost(options);
  const origGet = host.getSourceFile.bind(host);
  host.getSourceFile = (name, lang, ...rest) =>
    name === file ? ts.createSourceFile(name, text, lang, true) : origGet(name, lang, ...rest);
  const origExists = host.fileExists.bind(host);
  host.fileExists = (name) => name === file || origExists(name);
  const origRead = host.readFile.bind(host);
  host.readFile = (name) => (name === file ? text : origRead(name));
  const program = ts.createProgram([file], options, host);
  const diags = ts.getPreEmitDiagnostics(program);
  if (diags.length) {
    const msgs = diags.map((d) => ts.flattenDiagnosticMessageText(d.messageText, "\n"));
    throw new Error(`cannot load the Istio type declarations: ${msgs.join("; ")}`);
  }
  const checker = program.getTypeChecker();
  const sf = program.getSourceFile(file);
  const types = {};
  let i = 0;
  for (const stmt of sf.statements) {
    if (!ts.isVariableStatement(stmt)) continue;
    const decl = stmt.declarationList.declarations[0];
    const type = checker.getTypeAtLocation(decl.name);
    if (type.flags & (ts.TypeFlags.Any | ts.TypeFlags.Unknown)) {
      throw new Error(`declaration for ${entries[i][0]} resolved to any`);
    }
    types[entries[i][0]] = type;
    i += 1;
  }
  return { checker, types };
}

// Every field of `value` that the declared type does not have, as JSON pointers. Objects whose
// type declares no properties and no index signature (`{}`: preserve-unknown-fields) are
// free-form and not descended into.
function unknownFields(checker, type, value, path, out) {
  if (value === null || typeof value !== "object") return;
  const nonNull = checker.getNonNullableType(type);
  const parts = nonNull.isUnion() ? nonNull.types : [nonNull];
  if (Array.isArray(value)) {
    const arrays = parts.filter((t) => checker.isArrayType(t) || checker.isTupleType(t));
    if (!arrays.length) return; // a type error, reported by the schema check
    const elem = checker.getTypeArguments(arrays[0])[0];
    value.forEach((v, i) => unknownFields(checker, elem, v, `${path}/${i}`, out));
    return;
  }
  const objects = parts.filter((t) => t.flags & ts.TypeFlags.Object || t.isIntersection());
  if (!objects.length) return;
  const props = objects.flatMap((t) => checker.getPropertiesOfType(t));
  const index = objects.map((t) => checker.getIndexTypeOfType(t, ts.IndexKind.String)).find(Boolean);
  if (!props.length && !index) return; // free-form
  for (const [key, v] of Object.entries(value)) {
    const at = `${path}/${key.replaceAll("~", "~0").replaceAll("/", "~1")}`;
    const owner = objects.find((t) => checker.getPropertyOfType(t, key));
    if (owner) {
      const sym = checker.getPropertyOfType(owner, key);
      unknownFields(checker, checker.getTypeOfSymbol(sym), v, at, out);
    } else if (index) {
      unknownFields(checker, index, v, at, out);
    } else {
      out.push({ check: "fields", path: at, message: `unknown field "${key}"` });
    }
  }
}

function fieldErrors(checker, type, doc) {
  const out = [];
  unknownFields(checker, type, doc, "", out);
  return out;
}

// ---- cel: the CRDs' x-kubernetes-validations rules, by hand ----

function celErrors(doc) {
  const errs = [];
  const spec = doc?.spec ?? {};
  const err = (path, message) => errs.push({ check: "cel", path, message });
  const labels = (path, map) => {
    if (!map || typeof map !== "object") return;
    for (const [k, v] of Object.entries(map)) {
      if (k.includes("*")) err(path, "wildcard not allowed in label key match");
      if (k.length === 0) err(path, "key must not be empty");
      if (typeof v === "string" && v.includes("*")) err(`${path}/${k}`, "wildcard not allowed in label value match");
    }
  };
  if (doc?.kind === "WasmPlugin") {
    const set = ["selector", "targetRef", "targetRefs"].filter((f) => spec[f] !== undefined);
    if (set.length > 1) err("/spec", `only one of targetRefs or selector can be set (have ${set.join(", ")})`);
    labels("/spec/selector/matchLabels", spec.selector?.matchLabels);
    if (typeof spec.url === "string") {
      const m = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(spec.url);
      const scheme = m ? m[1].toLowerCase() : "";
      if (!["", "http", "https", "oci", "file"].includes(scheme)) {
        err("/spec/url", "url must have schema one of [http, https, file, oci]");
      }
    }
  }
  if (doc?.kind === "EnvoyFilter") {
    const set = ["workloadSelector", "targetRefs"].filter((f) => spec[f] !== undefined);
    if (set.length > 1) err("/spec", "only one of targetRefs or workloadSelector can be set");
    labels("/spec/workloadSelector/labels", spec.workloadSelector?.labels);
  }
  return errs;
}

// ---- webhook: istiod's EnvoyFilter validation (the structural parts) ----

function webhookErrors(doc) {
  if (doc?.kind !== "EnvoyFilter") return [];
  const errs = [];
  const HCM = ["envoy.filters.network.http_connection_manager", "envoy.http_connection_manager"];
  for (const [i, cp] of (doc.spec?.configPatches ?? []).entries()) {
    const at = `/spec/configPatches/${i}`;
    const err = (message) => errs.push({ check: "webhook", path: at, message });
    if (!cp || typeof cp !== "object") { err("Envoy filter: null config patch"); continue; }
    if (!cp.applyTo || cp.applyTo === "INVALID") { err("Envoy filter: missing applyTo"); continue; }
    if (!cp.patch) { err("Envoy filter: missing patch"); continue; }
    if (!cp.patch.operation || cp.patch.operation === "INVALID") { err("Envoy filter: missing patch operation"); continue; }
    if (cp.patch.operation !== "REMOVE" && cp.patch.value == null) {
      err("Envoy filter: missing patch value for non-remove operation");
      continue;
    }
    const filter = cp.match?.listener?.filterChain?.filter;
    if (filter) {
      if (!filter.name) err("Envoy filter: filter match has no name to match on");
      else if (filter.subFilter) {
        if (cp.applyTo !== "HTTP_FILTER") err("Envoy filter: subfilter match can be used with applyTo HTTP_FILTER only");
        if (!HCM.includes(filter.name)) err(`Envoy filter: subfilter match requires filter match with ${HCM[0]}`);
        if (!filter.subFilter.name) err("Envoy filter: subfilter match has no name to match on");
      }
    }
  }
  return errs;
}

// ---- main ----

function main() {
  const input = process.argv[2];
  if (!input) {
    process.stderr.write("usage: node validate.mjs INPUT.json\n");
    return 2;
  }
  const items = JSON.parse(readFileSync(input, "utf8"));
  if (!Array.isArray(items)) throw new Error("input must be a JSON array of {name, doc}");
  const { checker, types } = declaredTypes();
  const report = items.map(({ name, doc }) => {
    const spec = KINDS[kindKey(doc)];
    if (!spec) {
      return {
        name,
        kind: kindKey(doc),
        errors: [{ check: "kind", path: "/", message: `not a supported resource: ${kindKey(doc)}` }],
      };
    }
    return {
      name,
      kind: kindKey(doc),
      errors: [...schemaErrors(spec, doc), ...fieldErrors(checker, types[kindKey(doc)], doc), ...celErrors(doc), ...webhookErrors(doc)],
    };
  });
  process.stdout.write(JSON.stringify(report, null, 2) + "\n");
  return report.every((r) => r.errors.length === 0) ? 0 : 1;
}

try {
  process.exitCode = main();
} catch (e) {
  process.stderr.write(`validate.mjs: ${e?.stack ?? e}\n`);
  process.exitCode = 2;
}
