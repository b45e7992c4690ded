/**
 * Structural comparison of two protobuf schemas, used to prove that proto/api.proto is the
 * same API as upstream k8s.io/cri-api. Comments, formatting and file-level options (go_package)
 * are ignored; everything that changes the wire format, the generated code or the gRPC method
 * paths is compared.
 *
 * Each schema is flattened into "elements" (package, service, rpc, message, field, oneof, enum,
 * enum value), each with a small record of attributes. Two schemas are compared element by
 * element in both directions, giving one readable line per difference.
 */

import protobuf from 'protobufjs';

export type ElementKind =
  | 'package'
  | 'service'
  | 'rpc'
  | 'message'
  | 'field'
  | 'oneof'
  | 'enum'
  | 'enum value';

export interface SchemaElement {
  kind: ElementKind;
  /** Fully qualified name without the leading dot, e.g. runtime.v1.VersionResponse.version. */
  name: string;
  /** The enclosing element's name, so children of a missing element are not listed again. */
  parent: string | undefined;
  attributes: Record<string, string>;
}

export interface SchemaSummary {
  elements: Map<string, SchemaElement>;
  counts: Record<ElementKind, number>;
}

/** Loads a .proto file the same way the server does: field names as written. */
export function loadSchemaFile(path: string): protobuf.Root {
  const root = new protobuf.Root();
  root.loadSync(path, { keepCase: true });
  root.resolveAll();
  return root;
}

/** Parses .proto source text (used by the tests that feed the comparer altered copies). */
export function parseSchemaText(text: string): protobuf.Root {
  const { root } = protobuf.parse(text, { keepCase: true });
  root.resolveAll();
  return root;
}

function stripDot(name: string): string {
  return name.startsWith('.') ? name.slice(1) : name;
}

/**
 * Options that affect meaning (deprecated, debug_redact, packed, ...). Custom options written
 * as `(ext).name` are dropped: upstream once carried gogoproto ones, which only steered Go code
 * generation.
 */
function describeOptions(options: Record<string, unknown> | undefined, ignore: string[] = []): string {
  if (!options) return '-';
  const kept = Object.entries(options)
    .filter(([key]) => !key.startsWith('(') && !ignore.includes(key))
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([key, value]) => `${key}=${JSON.stringify(value)}`);
  return kept.length > 0 ? kept.join(',') : '-';
}

function describeReserved(reserved: Array<number[] | string> | undefined): string {
  if (!reserved || reserved.length === 0) return '-';
  return reserved
    .map((entry) => (typeof entry === 'string' ? JSON.stringify(entry) : `${entry[0]}-${entry[1]}`))
    .sort()
    .join(',');
}

function isProto3Optional(field: protobuf.Field): boolean {
  return field.options?.['proto3_optional'] === true;
}

function fieldType(field: protobuf.Field): string {
  // Resolved message/enum types are compared by full name, so a same-named type in another
  // package is told apart.
  return field.resolvedType ? stripDot(field.resolvedType.fullName) : field.type;
}

function fieldLabel(field: protobuf.Field): string {
  if (field instanceof protobuf.MapField) return 'map';
  if (field.repeated) return 'repeated';
  if (isProto3Optional(field)) return 'optional';
  // proto2 'required'/'optional' surface here if a proto2 file is compared; protobufjs keeps the
  // parsed label on the field without declaring it in its typings.
  return (field as { rule?: string }).rule ?? 'singular';
}

/** Flattens a schema into named elements with their attributes. */
export function summarizeSchema(root: protobuf.Root): SchemaSummary {
  const elements = new Map<string, SchemaElement>();
  const counts: Record<ElementKind, number> = {
    package: 0,
    service: 0,
    rpc: 0,
    message: 0,
    field: 0,
    oneof: 0,
    enum: 0,
    'enum value': 0,
  };
  const add = (element: SchemaElement): void => {
    elements.set(`${element.kind} ${element.name}`, element);
    counts[element.kind] += 1;
  };

  const visit = (object: protobuf.ReflectionObject, parentKey: string | undefined): void => {
    const name = stripDot(object.fullName);
    if (object instanceof protobuf.Type) {
      add({
        kind: 'message',
        name,
        parent: parentKey,
        attributes: { reserved: describeReserved(object.reserved), options: describeOptions(object.options) },
      });
      const key = `message ${name}`;
      for (const field of object.fieldsArray) {
        const oneof = field.partOf && !isProto3Optional(field) ? field.partOf.name : '-';
        add({
          kind: 'field',
          name: `${name}.${field.name}`,
          parent: key,
          attributes: {
            number: String(field.id),
            type: fieldType(field),
            label: fieldLabel(field),
            'map key type': field instanceof protobuf.MapField ? field.keyType : '-',
            oneof,
            options: describeOptions(field.options, ['proto3_optional']),
          },
        });
      }
      for (const oneof of object.oneofsArray) {
        // proto3 `optional` is represented as a one-member oneof named after the field; that
        // is reported as the field's label instead.
        const synthetic =
          oneof.oneof.length === 1 &&
          oneof.fieldsArray.every((member) => isProto3Optional(member) && oneof.name === `_${member.name}`);
        if (synthetic) continue;
        add({
          kind: 'oneof',
          name: `${name}.${oneof.name}`,
          parent: key,
          attributes: { members: [...oneof.oneof].sort().join(',') },
        });
      }
      for (const nested of object.nestedArray) visit(nested, key);
      return;
    }
    if (object instanceof protobuf.Enum) {
      add({
        kind: 'enum',
        name,
        parent: parentKey,
        attributes: { reserved: describeReserved(object.reserved), options: describeOptions(object.options) },
      });
      for (const [valueName, valueNumber] of Object.entries(object.values)) {
        add({
          kind: 'enum value',
          name: `${name}.${valueName}`,
          parent: `enum ${name}`,
          attributes: { number: String(valueNumber) },
        });
      }
      return;
    }
    if (object instanceof protobuf.Service) {
      add({
        kind: 'service',
        name,
        parent: parentKey,
        attributes: { options: describeOptions(object.options) },
      });
      for (const method of object.methodsArray) {
        method.resolve();
        add({
          kind: 'rpc',
          name: `${name}.${method.name}`,
          parent: `service ${name}`,
          attributes: {
            request: method.resolvedRequestType
              ? stripDot(method.resolvedRequestType.fullName)
              : method.requestType,
            response: method.resolvedResponseType
              ? stripDot(method.resolvedResponseType.fullName)
              : method.responseType,
            'request stream': String(method.requestStream === true),
            'response stream': String(method.responseStream === true),
            options: describeOptions(method.options),
          },
        });
      }
      return;
    }
    if (object instanceof protobuf.Namespace) {
      // A plain namespace is a package (or a segment of one, e.g. `runtime` in runtime.v1).
      add({ kind: 'package', name, parent: parentKey, attributes: {} });
      for (const nested of object.nestedArray) visit(nested, `package ${name}`);
    }
  };

  for (const top of root.nestedArray) visit(top, undefined);
  return { elements, counts };
}

/**
 * Lists every difference between the expected schema (upstream) and the actual one (ours).
 * An empty list means the two define the same API.
 */
export function compareSchemas(expected: protobuf.Root, actual: protobuf.Root): string[] {
  const upstream = summarizeSchema(expected).elements;
  const ours = summarizeSchema(actual).elements;
  const differences: string[] = [];

  for (const [key, element] of upstream) {
    const mine = ours.get(key);
    if (!mine) {
      if (element.parent && !ours.has(element.parent)) continue; // its parent is already listed
      differences.push(`missing in ours: ${key} (${describeAttributes(element)})`);
      continue;
    }
    for (const attribute of Object.keys(element.attributes)) {
      const want = element.attributes[attribute];
      const have = mine.attributes[attribute];
      if (want !== have) differences.push(`${key}: ${attribute} is ${have} in ours, ${want} upstream`);
    }
  }
  for (const [key, element] of ours) {
    if (upstream.has(key)) continue;
    if (element.parent && !upstream.has(element.parent)) continue;
    differences.push(`extra in ours: ${key} (${describeAttributes(element)})`);
  }
  return differences.sort();
}

function describeAttributes(element: SchemaElement): string {
  const parts = Object.entries(element.attributes)
    .filter(([, value]) => value !== '-')
    .map(([attribute, value]) => `${attribute} ${value}`);
  return parts.length > 0 ? parts.join(', ') : 'no attributes';
}
