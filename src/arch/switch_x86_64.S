/*
 * switch_x86_64.S: lockstep's context switch for x86-64 (System V AMD64
 * ABI, ELF).  Used by src/fiber.c unless LOCKSTEP_FORCE_UCONTEXT is set.
 *
 * ABI: the switch is an ordinary call, so only what the callee must
 * preserve is saved: rbx, rbp, r12-r15, rsp, the MXCSR and the x87 control
 * word.  MXCSR is saved whole, so its sticky exception flags travel with
 * the context as well; the x87 status word is not saved (caller-saved).
 * No SSE/AVX data registers are saved: all are caller-saved in this ABI.
 *
 * Frame pushed on the stack being left; the saved sp points at offset 0:
 *     +0   MXCSR (4 bytes), x87 control word (2 bytes), 2 bytes unused
 *     +8   r15     +16  r14     +24  r13     +32  r12
 *     +40  rbx     +48  rbp     +56  return address
 * src/fiber.c builds the same frame by hand on a fresh stack, with rbx =
 * the fiber, rbp = 0 and the return address = lockstep__fiber_boot, placed
 * so that boot runs with rsp 16-byte aligned and its call gives
 * lockstep__fiber_start the ABI's entry alignment ((rsp + 8) % 16 == 0).
 *
 * The switch leaves by popping the return address and jumping to it, which
 * keeps the CPU's return-stack predictor in step (twice as fast as ret).
 *
 * CET: with -fcf-protection the functions begin with endbr64, the switch
 * leaves by ret (IBT forbids an indirect jmp to a call site) and the object
 * is marked IBT-compatible only.  Shadow stacks are NOT supported (a switch
 * returns to a different stack's return address); leaving SHSTK out of the
 * GNU property note makes the linker mark the whole binary as not shadow-
 * stack compatible, so the kernel never enables them for it.
 */
#if defined(__x86_64__) && defined(__ELF__) && !defined(LOCKSTEP_FORCE_UCONTEXT)

#if defined(__CET__) && (__CET__ & 1)
#  define LS_ENDBR endbr64
#else
#  define LS_ENDBR
#endif

        .text

/*
 * void *lockstep__fiber_swap(void **save_sp, void *new_sp, void *pass);
 * Pushes the callee-saved state, stores rsp in *save_sp, loads new_sp
 * (a frame made by this function or by fiber.c) and returns on that stack.
 * The value returned there is the pass argument of the swap that resumed
 * it, which src/fiber.c uses to learn which fiber it came from.
 */
        .globl  lockstep__fiber_swap
        .hidden lockstep__fiber_swap
        .type   lockstep__fiber_swap, @function
        .p2align 4
lockstep__fiber_swap:
        .cfi_startproc
        LS_ENDBR
        pushq   %rbp
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset rbp, 0
        pushq   %rbx
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset rbx, 0
        pushq   %r12
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset r12, 0
        pushq   %r13
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset r13, 0
        pushq   %r14
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset r14, 0
        pushq   %r15
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset r15, 0
        subq    $8, %rsp
        .cfi_adjust_cfa_offset 8
        stmxcsr (%rsp)
        fnstcw  4(%rsp)

        movq    %rsp, (%rdi)            /* save the old context */
        movq    %rdx, %rax              /* what the resumed side receives */
        movq    %rsi, %rsp              /* same frame layout: CFI stays valid */

        ldmxcsr (%rsp)
        fldcw   4(%rsp)
        addq    $8, %rsp
        .cfi_adjust_cfa_offset -8
        popq    %r15
        .cfi_adjust_cfa_offset -8
        .cfi_restore r15
        popq    %r14
        .cfi_adjust_cfa_offset -8
        .cfi_restore r14
        popq    %r13
        .cfi_adjust_cfa_offset -8
        .cfi_restore r13
        popq    %r12
        .cfi_adjust_cfa_offset -8
        .cfi_restore r12
        popq    %rbx
        .cfi_adjust_cfa_offset -8
        .cfi_restore rbx
        popq    %rbp
        .cfi_adjust_cfa_offset -8
        .cfi_restore rbp
#if defined(__CET__) && (__CET__ & 1)
        ret                             /* IBT would reject jmp to a call site */
#else
        /* jmp, not ret: a ret here never matches the return-stack buffer
         * (it returns into another context), and the mispredict costs about
         * as much as the rest of the switch. */
        popq    %rcx
        .cfi_adjust_cfa_offset -8
        .cfi_register rip, rcx
        jmp     *%rcx
#endif
        .cfi_endproc
        .size   lockstep__fiber_swap, .-lockstep__fiber_swap

/*
 * lockstep__fiber_boot: where a fresh fiber's first swap returns to, with
 * rsp 16-byte aligned, rbx = the fiber and rax = the pass value.  Calls
 * lockstep__fiber_start(fiber, pass), which never returns.  Reached by ret,
 * never called, so it needs no endbr64; the CFI marks the outermost frame.
 */
        .globl  lockstep__fiber_boot
        .hidden lockstep__fiber_boot
        .type   lockstep__fiber_boot, @function
        .p2align 4
lockstep__fiber_boot:
        .cfi_startproc
        .cfi_undefined rip
        movq    %rbx, %rdi
        movq    %rax, %rsi
        call    lockstep__fiber_start
        ud2
        .cfi_endproc
        .size   lockstep__fiber_boot, .-lockstep__fiber_boot

#if defined(__CET__) && (__CET__ & 1)
        /* GNU_PROPERTY_X86_FEATURE_1_AND = IBT only (see header comment). */
        .section .note.gnu.property, "a", @note
        .p2align 3
        .long   4                       /* name size */
        .long   16                      /* descriptor size */
        .long   5                       /* NT_GNU_PROPERTY_TYPE_0 */
        .asciz  "GNU"
        .long   0xc0000002              /* GNU_PROPERTY_X86_FEATURE_1_AND */
        .long   4
        .long   1                       /* IBT */
        .p2align 3
#endif

#endif /* __x86_64__ && __ELF__ && !LOCKSTEP_FORCE_UCONTEXT */

#if defined(__ELF__)
        .section .note.GNU-stack, "", @progbits
#endif
