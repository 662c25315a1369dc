// Renders /openapi.json as a readable list of endpoints and their fields (no CDN needed).
(function () {
  "use strict";

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function resolve(schema, spec) {
    if (schema && schema.$ref) return spec.components.schemas[schema.$ref.split("/").pop()];
    return schema || {};
  }

  function typeName(schema, spec) {
    if (!schema) return "any";
    if (schema.$ref) return schema.$ref.split("/").pop();
    if (schema.anyOf) return schema.anyOf.map((s) => typeName(s, spec)).join(" | ");
    if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
    if (schema.type === "array") return typeName(schema.items, spec) + "[]";
    return schema.type || "object";
  }

  function limits(schema) {
    const parts = [];
    const names = { minLength: "min length", maxLength: "max length", minItems: "min items",
      maxItems: "max items", minimum: "min", maximum: "max" };
    const all = [schema, ...(schema.anyOf || []), schema.items || {}];
    for (const item of all) {
      for (const [key, label] of Object.entries(names)) {
        if (item[key] !== undefined) parts.push(`${label} ${item[key]}`);
      }
    }
    if (schema.default !== undefined) parts.push(`default ${JSON.stringify(schema.default)}`);
    return parts.join(", ");
  }

  function fieldTable(schema, spec) {
    const model = resolve(schema, spec);
    const table = el("table", "fields");
    const head = table.insertRow();
    for (const title of ["field", "type", "required", "notes"]) {
      head.append(el("th", "", title));
    }
    const required = new Set(model.required || []);
    for (const [name, raw] of Object.entries(model.properties || {})) {
      const row = table.insertRow();
      row.insertCell().append(el("code", "", name));
      row.insertCell().textContent = typeName(raw, spec);
      row.insertCell().textContent = required.has(name) ? "yes" : "";
      const notes = [raw.description, limits(raw)].filter(Boolean).join(". ");
      row.insertCell().textContent = notes;
    }
    return table;
  }

  function nestedRefs(schema, spec) {
    const model = resolve(schema, spec);
    const refs = [];
    for (const raw of Object.values(model.properties || {})) {
      for (const item of [raw, raw.items || {}, ...(raw.anyOf || [])]) {
        if (item.$ref && resolve(item, spec).properties) refs.push(item);
      }
    }
    return refs;
  }

  function endpoint(path, method, operation, spec) {
    const card = el("section", "card");
    const title = el("h2");
    title.append(el("span", "method", method.toUpperCase()), " ", el("code", "", path));
    card.append(title);
    if (operation.description || operation.summary) {
      card.append(el("p", "hint", operation.description || operation.summary));
    }
    const body = operation.requestBody;
    if (body) {
      const schema = body.content["application/json"].schema;
      card.append(el("h3", "", "Request body: " + typeName(schema, spec)), fieldTable(schema, spec));
      for (const ref of nestedRefs(schema, spec)) {
        card.append(el("h3", "", typeName(ref, spec)), fieldTable(ref, spec));
      }
    }
    for (const [code, response] of Object.entries(operation.responses || {})) {
      const content = response.content && response.content["application/json"];
      const schema = content ? content.schema : null;
      card.append(el("h3", "", `${code}: ${response.description}`));
      if (code.startsWith("2") && schema && resolve(schema, spec).properties) {
        card.append(fieldTable(schema, spec));
      }
    }
    return card;
  }

  const curl = document.getElementById("curl");
  curl.textContent = curl.textContent.replace("http://127.0.0.1:8000", window.location.origin);

  fetch("/openapi.json")
    .then((response) => response.json())
    .then((spec) => {
      const box = document.getElementById("endpoints");
      box.textContent = "";
      for (const [path, methods] of Object.entries(spec.paths)) {
        for (const [method, operation] of Object.entries(methods)) {
          box.append(endpoint(path, method, operation, spec));
        }
      }
    })
    .catch((error) => {
      document.getElementById("endpoints").textContent = "Could not load /openapi.json: " + error;
    });
})();
