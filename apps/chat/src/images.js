// Images for vision models: read as base64 (Ollama's `images` field takes it without a data: prefix),
// shown from data: URLs (the CSP allows img-src data:), at most MAX_IMAGES per message, MAX_IMAGE_BYTES each.

export const MAX_IMAGES = 4;
export const MAX_IMAGE_BYTES = 8 * 1024 * 1024;
const MIME_BY_PREFIX = { iVBOR: "image/png", "/9j/": "image/jpeg", R0lG: "image/gif", UklG: "image/webp" };

/** A data: URL for a base64 image, its type read from the first bytes. */
export function imageSrc(base64) {
  const prefix = Object.keys(MIME_BY_PREFIX).find((p) => base64.startsWith(p));
  return `data:${prefix ? MIME_BY_PREFIX[prefix] : "image/png"};base64,${base64}`;
}

function readImage(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

/** The images waiting to be sent with the next message, shown as removable thumbnails. */
export class Attachments {
  constructor(container, onError) {
    this.container = container;
    this.onError = onError;
    this.images = [];
  }

  async add(files) {
    for (const file of files) {
      if (this.images.length >= MAX_IMAGES) {
        this.onError(`At most ${MAX_IMAGES} images per message.`);
        break;
      }
      if (!file.type.startsWith("image/") || file.size > MAX_IMAGE_BYTES) {
        this.onError(`${file.name}: only images up to ${MAX_IMAGE_BYTES / 1024 / 1024} MB can be attached.`);
        continue;
      }
      this.images.push(await readImage(file));
    }
    this.show();
  }

  /** The images for the message being sent; the tray empties. */
  take() {
    const taken = this.images;
    this.clear();
    return taken;
  }

  clear() {
    this.images = [];
    this.show();
  }

  show() {
    this.container.hidden = !this.images.length;
    this.container.replaceChildren(
      ...this.images.map((image, i) => {
        const figure = document.createElement("div");
        figure.className = "thumb";
        const img = document.createElement("img");
        img.src = imageSrc(image);
        img.alt = `Attached image ${i + 1}`;
        const remove = document.createElement("button");
        remove.type = "button";
        remove.textContent = "×";
        remove.setAttribute("aria-label", `Remove image ${i + 1}`);
        remove.onclick = () => {
          this.images.splice(i, 1);
          this.show();
        };
        figure.append(img, remove);
        return figure;
      }),
    );
  }
}
