import { randomBytes } from 'node:crypto'
import type { H3Event } from 'h3'

const SCRIPT_TAG_PATTERN = /<script(?=[\s>])/g

/**
 * Sets the security headers on every response and gives each inline script of a rendered
 * page a per-request nonce, because Nuxt's hydration needs inline scripts (the runtime
 * config) that a CSP without 'unsafe-inline' would block.
 */
export default defineNitroPlugin((nitroApp) => {
  nitroApp.hooks.hook('request', (event) => {
    const nonce = randomBytes(16).toString('base64')
    event.context.cspNonce = nonce
    setSecurityHeaders(event, nonce)
  })

  nitroApp.hooks.hook('render:html', (html, { event }) => {
    const nonce = (event as H3Event).context?.cspNonce as string | undefined
    if (!nonce) {
      return
    }
    const addNonce = (chunk: string) => chunk.replace(SCRIPT_TAG_PATTERN, `<script nonce="${nonce}"`)
    // Only the document parts Nuxt writes: the app's own HTML (html.body) never contains
    // script tags, and user text in it is escaped.
    html.head = html.head.map(addNonce)
    html.bodyPrepend = html.bodyPrepend.map(addNonce)
    html.bodyAppend = html.bodyAppend.map(addNonce)
  })
})

function setSecurityHeaders(event: H3Event, nonce: string): void {
  setResponseHeaders(event, {
    'X-Content-Type-Options': 'nosniff',
    'Referrer-Policy': 'strict-origin-when-cross-origin',
    'X-Frame-Options': 'DENY',
  })
  // Vite's dev server injects scripts and a websocket that this policy would block.
  if (import.meta.dev) {
    return
  }
  setResponseHeader(event, 'Content-Security-Policy', buildContentSecurityPolicy(event, nonce))
}

function buildContentSecurityPolicy(event: H3Event, nonce: string): string {
  const config = useRuntimeConfig(event)
  const connectSources = ["'self'", readOrigin(String(config.public.apiBase))].filter(Boolean)

  return [
    "default-src 'self'",
    `script-src 'self' 'nonce-${nonce}'`,
    // Nuxt UI sets theme variables in <style> tags and components use style attributes.
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data:",
    "font-src 'self' data:",
    `connect-src ${connectSources.join(' ')}`,
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
  ].join('; ')
}

function readOrigin(url: string): string {
  try {
    return new URL(url).origin
  }
  catch {
    console.error(`[security headers] NUXT_PUBLIC_API_BASE is not an absolute URL: ${JSON.stringify(url)}. The browser will not be allowed to call the API.`)
    return ''
  }
}
